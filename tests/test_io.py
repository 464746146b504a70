"""``io.empty_dir``: the one implementation that clears the gateway's share directory (used by the local gateway and
by ``infer.clean_share_dir``); it removes files, folders and links and never follows a link."""

from __future__ import annotations

from pathlib import Path

from kaggle_utils import gateway, infer, io


def _populate(share: Path, outside: Path) -> None:
    (outside / "keep_dir").mkdir(parents=True)
    (outside / "keep_dir" / "data.dcm").write_bytes(b"target of a folder link")
    (outside / "keep_file.dcm").write_bytes(b"target of a file link")
    share.mkdir()
    (share / "file.txt").write_text("x")
    (share / "sub" / "deeper").mkdir(parents=True)
    (share / "sub" / "deeper" / "a.dcm").write_bytes(b"a")
    (share / "sub" / "link_inside").symlink_to(outside / "keep_dir", target_is_directory=True)
    (share / "dir_link").symlink_to(outside / "keep_dir", target_is_directory=True)
    (share / "file_link").symlink_to(outside / "keep_file.dcm")
    (share / "dangling").symlink_to(outside / "gone")


def test_empty_dir_removes_files_dirs_and_links_without_following_them(tmp_path):
    share, outside = tmp_path / "share", tmp_path / "outside"
    _populate(share, outside)
    assert io.empty_dir(share) == 5
    assert share.is_dir() and list(share.iterdir()) == []
    # every link target survives: a followed folder link would have emptied keep_dir
    assert (outside / "keep_dir" / "data.dcm").read_bytes() == b"target of a folder link"
    assert (outside / "keep_file.dcm").read_bytes() == b"target of a file link"
    assert io.empty_dir(share) == 0
    assert io.empty_dir(tmp_path / "missing") == 0


def test_infer_clean_share_dir_uses_it(tmp_path):
    share, outside = tmp_path / "share", tmp_path / "outside"
    _populate(share, outside)
    assert infer.clean_share_dir(share.resolve(), share / "sub" / "deeper") == 5
    assert list(share.iterdir()) == [] and (outside / "keep_dir" / "data.dcm").is_file()


def test_one_share_dir_emptier():
    """The gateway and the inference side clear the share directory with the same function (issue 14: it existed
    twice, with different handling of links)."""
    assert gateway.empty_dir is io.empty_dir and infer.empty_dir is io.empty_dir
    assert not hasattr(gateway.LocalGateway, "_empty_share_dir")
