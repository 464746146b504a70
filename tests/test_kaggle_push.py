"""The Kaggle side: settings -> metadata, staged trees, the exact kaggle CLI commands, dry runs, credentials.

A fake ``kaggle`` executable first on PATH records each call (argv, the staged folder's files and their text) so the
tests see exactly what a real push would send, without a network or an account.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_utils import kaggle_push as kp
from kaggle_utils.paths import REPO_ROOT

USER = "alice"
COMPETITION = "rsna-intracranial-aneurysm-detection"
KEY = "fakelegacykey0123456789"  # the test's own kaggle.json key
NOTEBOOK = {"cells": [{"cell_type": "code", "source": ["import kaggle_utils"], "metadata": {}, "outputs": [],
                       "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}

FAKE_KAGGLE = """#!{python}
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
record = {{"argv": argv}}
if "-p" in argv:
    folder = Path(argv[argv.index("-p") + 1])
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    record["tree"] = [p.relative_to(folder).as_posix() for p in files]
    record["text"] = "".join(p.read_text(errors="replace") for p in files)
    meta = [p for p in files if p.name.endswith("-metadata.json")]
    record["meta"] = json.loads(meta[0].read_text()) if meta else None
with open(os.environ["FAKE_KAGGLE_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
if argv[:2] == ["datasets", "status"]:
    if argv[2] in os.environ.get("FAKE_KAGGLE_EXISTING", "").split(","):
        print("ready")
        sys.exit(0)
    if os.environ.get("FAKE_KAGGLE_STATUS_ERROR"):
        print("500 Server Error: Internal Server Error", file=sys.stderr)
        sys.exit(1)
    print("404 Client Error: Not Found for url: https://www.kaggle.com/api/v1/datasets/status/" + argv[2],
          file=sys.stderr)
    sys.exit(1)
print("ok")
"""


def write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture()
def kit(tmp_path, monkeypatch):
    """A small repo (the real kaggle.yaml with user alice), cache, run, wheels, credentials and a recording kaggle."""
    repo = tmp_path / "repo"
    settings_text = (REPO_ROOT / "kaggle.yaml").read_text().replace(kp.USERNAME_PLACEHOLDER, USER)
    write(repo / "kaggle.yaml", settings_text)
    write(repo / "kaggle_wheels.txt", (REPO_ROOT / "kaggle_wheels.txt").read_text())
    write(repo / "kaggle_utils" / "__init__.py", "")
    write(repo / "kaggle_utils" / "sub" / "deep" / "mod.py", "VALUE = 1\n")
    write(repo / "kaggle_utils" / "__pycache__" / "mod.cpython-311.pyc", "cache")
    write(repo / "kaggle_utils" / ".hidden_notes", "dotfile")
    write(repo / "kaggle_utils" / "__pycache__" / "stale_notes.txt", "cache folder content")
    write(repo / "configs" / ".ipynb_checkpoints" / "base-checkpoint.yaml", "name: old\n")
    write(repo / "configs" / "base.yaml", "name: base\n")
    write(repo / "configs" / "models" / "m.yaml", "model: {}\n")
    write(repo / "submit.py", "print('submit')\n")
    write(repo / "requirements.txt", "numpy\n")
    for name in ("00_eda", "01_preprocess", "02_train", "03_inference"):
        write(repo / "notebooks" / f"{name}.ipynb", json.dumps(NOTEBOOK))
    cache = tmp_path / "cache"
    for rel in ("manifest.parquet", "cache_info.json", "train.csv", "series/a.npz", "series/b.npz"):
        write(cache / rel)
    write(cache / ".manifest.parquet.abc.tmp.parquet", "half-written")
    run = tmp_path / "runs" / "baseline"
    for rel in ("config.yaml", "priors.json", "oof.parquet", "fold0/model.pt", "fold0/metrics.json"):
        write(run / rel)
    wheels = tmp_path / "wheels"
    for name in kp.requirement_names(repo / "kaggle_wheels.txt"):
        write(wheels / f"{name.replace('-', '_')}-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "wheel")
    pretrained = tmp_path / "pretrained"
    write(pretrained / "backbone.pth", "weights")
    home = tmp_path / "home"
    write(home / ".kaggle" / "kaggle.json", json.dumps({"username": USER, "key": KEY}))
    bindir = tmp_path / "bin"
    fake = write(bindir / "kaggle", FAKE_KAGGLE.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / "kaggle_calls.jsonl"
    for var in [v for v in os.environ if v.startswith(("KAGGLE_", "FAKE_KAGGLE"))] + ["XDG_CONFIG_HOME"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.setenv("KAGGLE_UTILS_SETTINGS", str(repo / "kaggle.yaml"))
    monkeypatch.setenv("KAGGLE_UTILS_CACHE_DIR", str(cache))
    monkeypatch.setenv("KAGGLE_UTILS_RUNS", str(run))
    monkeypatch.setenv("KAGGLE_UTILS_WHEELS_DIR", str(wheels))
    monkeypatch.setenv("KAGGLE_UTILS_PRETRAINED_DIR", str(pretrained))
    return {"repo": repo, "cache": cache, "run": run, "wheels": wheels, "home": home, "log": log,
            "stage": tmp_path / "stage", "tmp": tmp_path}


def calls(kit) -> list[dict]:
    log = kit["log"]
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def printed_commands(out: str) -> list[list[str]]:
    """The ``$ kaggle ...`` lines of the output, as argv lists without the executable and the trailing note."""
    import shlex

    return [shlex.split(line[2:].split("    # ")[0])[1:] for line in out.splitlines() if line.startswith("$ kaggle")]


def ds(slug: str) -> str:
    return f"{USER}/{slug}"


# --------------------------------------------------------------------------------------------------------------------


def test_repo_settings_give_the_required_kernels_and_committed_metadata_is_current(monkeypatch):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)  # the committed files follow the settings file alone
    s = kp.load_settings(REPO_ROOT / "kaggle.yaml")
    meta = kp.all_metadata(s)
    pre, train, inf = (meta[f"kernel-{n}/kernel-metadata.json"] for n in ("preprocess", "train", "inference"))
    code, wheels = meta["code/dataset-metadata.json"]["id"], meta["wheels/dataset-metadata.json"]["id"]
    assert pre["dataset_sources"] == [code, wheels] and pre["competition_sources"] == [COMPETITION]
    assert train["dataset_sources"] == [meta["cache/dataset-metadata.json"]["id"], code, wheels,
                                        meta["pretrained/dataset-metadata.json"]["id"]]
    assert train["enable_gpu"] is True and train["machine_shape"] == "NvidiaTeslaT4"
    assert inf["enable_internet"] is False and inf["competition_sources"] == [COMPETITION]
    assert inf["enable_gpu"] is True and inf["machine_shape"] == "NvidiaTeslaT4"
    assert inf["dataset_sources"] == [code, wheels, meta["run-baseline/dataset-metadata.json"]["id"]]
    for rel, m in meta.items():
        if rel.startswith("kernel-"):
            assert m["enable_internet"] is False and m["is_private"] is True, rel
            assert m["code_file"].endswith(".ipynb") and kp.slug_of_title(m["title"]) == m["id"].split("/")[1]
    # The committed datasets_meta/ is exactly what the settings generate (no stale or hand-edited file).
    meta_dir = REPO_ROOT / s.meta_dir
    committed = {p.relative_to(meta_dir).as_posix(): json.loads(p.read_text()) for p in meta_dir.glob("*/*.json")}
    assert committed == meta


def test_push_all_issues_exactly_the_dry_run_commands_with_complete_trees(kit, capsys, monkeypatch):
    args = ["push", "all", "--stage-dir", str(kit["stage"]), "-m", "v1"]
    assert kp.main(args + ["--dry-run"]) == 0
    dry_out = capsys.readouterr().out
    assert not kit["log"].exists() and not kit["stage"].exists()  # the dry run called and staged nothing
    planned = printed_commands(dry_out)

    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", ds("rsna-iad-kit-code"))  # code exists -> version; the rest are new
    assert kp.main(args) == 0
    recorded = [c["argv"] for c in calls(kit)]
    st = str(kit["stage"])
    expected = [
        ["datasets", "status", ds("rsna-iad-kit-code")],
        ["datasets", "version", "-p", f"{st}/code", "-r", "zip", "-m", "v1"],
        ["datasets", "status", ds("rsna-iad-kit-wheels")],
        ["datasets", "create", "-p", f"{st}/wheels", "-r", "zip"],
        ["datasets", "status", ds("rsna-iad-kit-cache")],
        ["datasets", "create", "-p", f"{st}/cache", "-r", "zip"],
        ["datasets", "status", ds("rsna-iad-run-baseline")],
        ["datasets", "create", "-p", f"{st}/run-baseline", "-r", "zip"],
        ["datasets", "status", ds("rsna-iad-kit-pretrained")],
        ["datasets", "create", "-p", f"{st}/pretrained", "-r", "zip"],
        ["kernels", "push", "-p", f"{st}/kernel-eda"],
        ["kernels", "push", "-p", f"{st}/kernel-preprocess"],
        ["kernels", "push", "-p", f"{st}/kernel-train"],
        ["kernels", "push", "-p", f"{st}/kernel-inference"],
    ]
    assert recorded == expected
    # Every real call was announced by the dry run (which shows both branches of create-or-version).
    assert all(cmd in planned for cmd in recorded)
    assert len(planned) == len(recorded) + 5

    by_folder = {Path(c["argv"][c["argv"].index("-p") + 1]).name: c for c in calls(kit) if "-p" in c["argv"]}
    code_tree = by_folder["code"]["tree"]
    for rel in ("kaggle_utils/__init__.py", "kaggle_utils/sub/deep/mod.py", "configs/base.yaml",
                "configs/models/m.yaml", "submit.py", "requirements.txt", "kaggle.yaml", "kaggle_wheels.txt",
                "dataset-metadata.json"):
        assert rel in code_tree, rel
    assert not [r for r in code_tree if "__pycache__" in r or r.endswith(".pyc") or "/." in r]
    assert sorted(by_folder["cache"]["tree"]) == ["cache_info.json", "dataset-metadata.json", "manifest.parquet",
                                                  "series/a.npz", "series/b.npz", "train.csv"]
    assert "fold0/model.pt" in by_folder["run-baseline"]["tree"]
    assert "kaggle_wheels.txt" in by_folder["wheels"]["tree"] and len(by_folder["wheels"]["tree"]) == 9
    assert sorted(by_folder["kernel-inference"]["tree"]) == ["03_inference.ipynb", "kernel-metadata.json"]
    inf = by_folder["kernel-inference"]["meta"]
    assert inf["enable_internet"] is False and inf["competition_sources"] == [COMPETITION]
    assert inf["dataset_sources"] == [ds("rsna-iad-kit-code"), ds("rsna-iad-kit-wheels"), ds("rsna-iad-run-baseline")]
    assert by_folder["kernel-train"]["meta"]["machine_shape"] == "NvidiaTeslaT4"
    assert by_folder["code"]["meta"]["id"] == ds("rsna-iad-kit-code")
    # A real push also refreshes the repo's datasets_meta/ with the resolved username.
    kept = json.loads((kit["repo"] / "datasets_meta" / "kernel-inference" / "kernel-metadata.json").read_text())
    assert kept == inf


def test_missing_credentials_stop_before_staging_but_not_the_dry_run(kit, capsys):
    (kit["home"] / ".kaggle" / "kaggle.json").unlink()
    with pytest.raises(kp.KagglePushError, match="no Kaggle credentials") as err:
        kp.main(["push", "code", "--stage-dir", str(kit["stage"])])
    assert "\n" not in str(err.value)
    assert not kit["stage"].exists() and not kit["log"].exists()
    with pytest.raises(kp.KagglePushError, match="no Kaggle credentials"):
        kp.main(["submit", "--version", "2", "-m", "try"])
    assert kp.main(["push", "code", "--dry-run"]) == 0
    assert not kit["log"].exists()


@pytest.mark.parametrize("where", ["api_token_env", "username_key_env", "config_dir", "access_token_file", "xdg"])
def test_credential_sources_the_2x_cli_reads_are_found(kit, monkeypatch, where):
    (kit["home"] / ".kaggle" / "kaggle.json").unlink()
    assert kp.credential_source() is None
    if where == "api_token_env":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "tok")
    elif where == "username_key_env":
        monkeypatch.setenv("KAGGLE_USERNAME", USER)
        monkeypatch.setenv("KAGGLE_KEY", "k")
    elif where == "config_dir":
        write(kit["tmp"] / "cfg" / "kaggle.json", "{}")
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(kit["tmp"] / "cfg"))
    elif where == "access_token_file":
        write(kit["home"] / ".kaggle" / "access_token", "tok")
    else:
        (kit["home"] / ".kaggle").rmdir()  # the CLI falls back to the XDG folder only when ~/.kaggle is absent
        write(kit["tmp"] / "xdg" / "kaggle" / "kaggle.json", "{}")
        monkeypatch.setenv("XDG_CONFIG_HOME", str(kit["tmp"] / "xdg"))
    assert kp.credential_source() is not None


def test_credentials_are_never_staged_or_printed(kit, capfd, monkeypatch):
    planted_key, planted_token, env_token = "plantedkey987654321", "plantedtoken5555555", "envtoken0000111122"
    write(kit["repo"] / "kaggle_utils" / "kaggle.json", json.dumps({"username": USER, "key": planted_key}))
    write(kit["repo"] / "configs" / "access_token", planted_token)
    write(kit["repo"] / "configs" / "deploy.token", planted_token)
    monkeypatch.setenv("KAGGLE_API_TOKEN", env_token)
    assert kp.main(["push", "code", "kernels", "--dry-run"]) == 0
    assert kp.main(["push", "code", "kernels", "-m", "v"]) == 0
    out = capfd.readouterr()
    staged = calls(kit)
    assert staged
    for secret in (planted_key, planted_token, env_token, KEY):
        assert secret not in out.out + out.err
        assert not [c for c in staged if secret in c.get("text", "")]
    for c in staged:
        assert not [r for r in c.get("tree", []) if Path(r).name in ("kaggle.json", "access_token", "deploy.token")]
    # A credential copied into an ordinary file stops the push; the message names the file, never the value.
    kit["log"].unlink()
    write(kit["repo"] / "configs" / "notes.yaml", f"token: {env_token}\n")
    with pytest.raises(kp.KagglePushError, match="notes.yaml contains a Kaggle credential") as err:
        kp.main(["push", "code", "--dry-run"])
    assert env_token not in str(err.value) and not kit["log"].exists()
    write(kit["repo"] / "configs" / "notes.yaml", f"key: {planted_key}\n")  # a key only the planted kaggle.json holds
    monkeypatch.delenv("KAGGLE_API_TOKEN")
    with pytest.raises(kp.KagglePushError, match="notes.yaml contains a Kaggle credential"):
        kp.main(["push", "code"])
    assert not kit["log"].exists()


def edit_settings(kit, old: str, new: str) -> None:
    path = kit["repo"] / "kaggle.yaml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("slug: rsna-iad-kit-code", "slug: RSNA_iad_code", "lowercase letters, digits and single hyphens"),
        ("slug: rsna-iad-kit-cache", "slug: cache", "6 to 50 characters"),
        ("title: RSNA IAD kit code", "title: code", "6 to 50 characters"),
        ("title: RSNA IAD kit 02 train", "title: RSNA IAD kit 02 training", "gives slug"),
        ("title: RSNA IAD kit 01 preprocess", "title: " + "x" * 60, "5 to 50 characters"),
        ("inputs: [cache, code, wheels, pretrained]", "inputs: [cache, code, wheels, weights]",
         "input 'weights' is not defined"),
        ("internet: false              # code", "internet: true  # code", "must have internet: false"),
        ("inputs: [competition, code, wheels, runs]", "inputs: [code, wheels, runs]", "must list 'competition'"),
        ("accelerator: NvidiaTeslaT4     # GPU T4 x2", "accelerator: T4x2", "accelerator 'T4x2' is not one of"),
        ("username: your-kaggle-username", "username: Bad User", "username 'Bad User'"),
        ("  names: [baseline]", "  names: []", "runs.names is empty"),
        ("meta_dir: datasets_meta", "meta_dir: datasets_meta\ncolour: blue", "unknown key(s) ['colour']"),
    ],
)
def test_settings_errors_are_clear(kit, old, new, message):
    path = kit["repo"] / "kaggle.yaml"
    path.write_text((REPO_ROOT / "kaggle.yaml").read_text())
    edit_settings(kit, old, new)
    with pytest.raises(kp.KagglePushError, match=re.escape(message)):
        kp.main(["push", "meta", "--dry-run"])
    assert not kit["log"].exists()


def test_metadata_validation_before_any_call(kit):
    s = kp.load_settings()
    meta = kp.kernel_metadata(s, "inference")
    sources = kp.known_sources(s)
    kp.validate_kernel_metadata(meta, {"03_inference.ipynb"}, sources, "k")
    with pytest.raises(kp.KagglePushError, match="code file '03_inference.ipynb' is not in the staged folder"):
        kp.validate_kernel_metadata(meta, set(), sources, "k")
    with pytest.raises(kp.KagglePushError, match=r"dataset source\(s\) \['bob/other-data'\] are not defined"):
        kp.validate_kernel_metadata({**meta, "dataset_sources": ["bob/other-data"]}, {"03_inference.ipynb"},
                                    sources, "k")
    with pytest.raises(kp.KagglePushError, match="lacks 'enable_internet'"):
        kp.validate_kernel_metadata({k: v for k, v in meta.items() if k != "enable_internet"},
                                    {"03_inference.ipynb"}, sources, "k")
    with pytest.raises(kp.KagglePushError, match="must be of the form user/slug"):
        kp.validate_dataset_metadata({**kp.datasets_by_key(s)["code"], "id": "no-owner-here"}, "d")
    with pytest.raises(kp.KagglePushError, match="exactly one license"):
        kp.validate_dataset_metadata({**kp.datasets_by_key(s)["code"], "licenses": []}, "d")


def test_missing_inputs_stop_a_real_push_before_staging(kit, monkeypatch, capsys):
    (kit["repo"] / "notebooks" / "02_train.ipynb").unlink()
    (kit["repo"] / "notebooks" / "00_eda.ipynb").unlink()  # optional: skipped, not an error
    monkeypatch.delenv("KAGGLE_UTILS_CACHE_DIR")
    with pytest.raises(kp.KagglePushError, match="02_train.ipynb does not exist") as err:
        kp.main(["push", "all", "--stage-dir", str(kit["stage"])])
    assert "KAGGLE_UTILS_CACHE_DIR" in str(err.value)
    assert not kit["stage"].exists() and not kit["log"].exists()
    assert kp.main(["push", "kernels", "--only", "inference", "preprocess", "--stage-dir", str(kit["stage"])]) == 0
    assert [c["argv"][-1] for c in calls(kit)] == [f"{kit['stage']}/kernel-inference",
                                                   f"{kit['stage']}/kernel-preprocess"]
    kit["log"].unlink()
    assert kp.main(["push", "kernels", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "kernel eda: skipped" in out and "02_train.ipynb does not exist" in out
    write(kit["repo"] / "notebooks" / "02_train.ipynb", "not json")
    with pytest.raises(kp.KagglePushError, match="02_train.ipynb is not valid JSON"):
        kp.main(["push", "kernels", "--dry-run"])
    unlisted = kit["tmp"] / "runs" / "other"
    write(unlisted / "config.yaml")
    with pytest.raises(kp.KagglePushError, match="'other' is not in runs.names"):
        kp.main(["push", "runs", "--runs", str(unlisted), "--dry-run"])
    with pytest.raises(kp.KagglePushError, match="lacks"):
        (next(kit["wheels"].glob("python_gdcm*"))).unlink()
        kp.main(["push", "wheels"])
    assert not kit["log"].exists()


def test_status_failure_other_than_not_found_stops(kit, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_STATUS_ERROR", "1")
    with pytest.raises(kp.KagglePushError, match="cannot tell whether alice/rsna-iad-kit-code exists"):
        kp.main(["push", "code"])
    assert [c["argv"][:2] for c in calls(kit)] == [["datasets", "status"]]


def test_placeholder_username_only_passes_a_dry_run(kit, capsys):
    edit_settings(kit, f"username: {USER}", f"username: {kp.USERNAME_PLACEHOLDER}")
    assert kp.main(["push", "code", "--dry-run"]) == 0
    assert "placeholder" in capsys.readouterr().out
    with pytest.raises(kp.KagglePushError, match="placeholder"):
        kp.main(["push", "code"])
    assert kp.main(["push", "code", "--username", "carol", "--stage-dir", str(kit["stage"])]) == 0
    assert calls(kit)[0]["argv"] == ["datasets", "status", "carol/rsna-iad-kit-code"]


def test_submit_wraps_the_code_competition_submit(kit, capsys):
    assert kp.main(["submit", "--version", "3", "-m", "v3 try", "--dry-run"]) == 0
    assert not kit["log"].exists()
    assert kp.main(["submit", "--version", "3", "-m", "v3 try"]) == 0
    assert kp.main(["submit", "--kernel", "bob/my-kernel", "--version", "7", "-m", "m", "--wait", "0"]) == 0
    assert [c["argv"] for c in calls(kit)] == [
        ["competitions", "submit", COMPETITION, "-k", ds("rsna-iad-kit-03-inference"), "-v", "3",
         "-f", "submission.parquet", "-m", "v3 try"],
        ["competitions", "submit", COMPETITION, "-k", "bob/my-kernel", "-v", "7", "-f", "submission.parquet",
         "-m", "m", "--wait", "0"],
    ]
    with pytest.raises(kp.KagglePushError, match="must be of the form user/slug"):
        kp.main(["submit", "--kernel", "my-kernel", "--version", "1", "-m", "m"])
    with pytest.raises(kp.KagglePushError, match="positive kernel version"):
        kp.main(["submit", "--version", "0", "-m", "m"])


def test_our_flags_exist_in_the_installed_kaggle_cli(tmp_path):
    """The real kaggle CLI (not the fake) accepts every flag the kit passes."""
    import shutil

    real = shutil.which("kaggle", path=os.environ.get("PATH", ""))
    if real is None or "kaggle" not in Path(real).name:
        pytest.fail("the kaggle CLI from requirements.txt is not installed")
    env = {**os.environ, "HOME": str(tmp_path)}
    wanted = {("datasets", "create"): ["-p", "-r {skip,zip,tar}", "-u"],
              ("datasets", "version"): ["-m", "-p", "-r {skip,zip,tar}"],
              ("datasets", "status"): ["dataset"],
              ("kernels", "push"): ["-p FOLDER"],
              ("competitions", "submit"): ["-k KERNEL", "-v VERSION", "-f FILE_NAME", "-m MESSAGE", "--wait"]}
    for cmd, flags in wanted.items():
        out = subprocess.run([real, *cmd, "--help"], capture_output=True, text=True, env=env, timeout=60).stdout
        for flag in flags:
            assert flag in out, (cmd, flag)


FAKE_PIP = """#!{python}
import sys
from pathlib import Path
args = sys.argv[1:]
Path(sys.argv[0] + ".args").write_text("\\n".join(args))
dest = Path(args[args.index("-d") + 1])
for line in Path(args[args.index("-r") + 1]).read_text().splitlines():
    name = line.split("#")[0].split("==")[0].strip()
    if name and name != "{skip}":
        (dest / (name.replace("-", "_") + "-1.0-py3-none-any.whl")).write_text("w")
"""


@pytest.mark.parametrize("skip", ["", "python-gdcm"])
def test_wheels_download_for_kaggles_python(kit, monkeypatch, capsys, skip):
    fake = write(kit["tmp"] / "bin" / "pip", FAKE_PIP.format(python=sys.executable, skip=skip))
    fake.chmod(0o755)
    monkeypatch.setattr(kp, "PIP_COMMAND", (str(fake),))
    dest = kit["tmp"] / "new_wheels"
    assert kp.main(["wheels", "--wheels-dir", str(dest), "--dry-run"]) == 0
    assert not dest.exists() and not Path(str(fake) + ".args").exists()
    if skip:
        with pytest.raises(kp.KagglePushError, match=r"no wheel for \['python-gdcm'\]"):
            kp.main(["wheels", "--wheels-dir", str(dest)])
        return
    assert kp.main(["wheels", "--wheels-dir", str(dest)]) == 0
    args = Path(str(fake) + ".args").read_text().splitlines()
    assert args[:10] == ["download", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
                         "--abi", "cp311", "--platform", "manylinux_2_28_x86_64"]
    assert args[-4:] == ["-d", str(dest), "-r", str(kit["repo"] / "kaggle_wheels.txt")]
    assert (dest / "kaggle_wheels.txt").is_file() and kp.missing_wheels(dest / "kaggle_wheels.txt", dest) == []
    assert {"pylibjpeg", "python-gdcm"} <= set(kp.requirement_names(dest / "kaggle_wheels.txt"))


def test_new_user_dry_run_from_the_command_line(tmp_path, monkeypatch):
    """As a new user would run it: the full chain with metadata, missing inputs listed, nothing called."""
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE")}
    env.update(HOME=str(tmp_path), KAGGLE_UTILS_WORK_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "submit.py", "push", "all", "--dry-run"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    user = kp.load_settings(REPO_ROOT / "kaggle.yaml").username
    for text in (f"kaggle datasets status {user}/rsna-iad-kit-code",
                 "kaggle kernels push -p '<tmp>/kernel-inference'", '"enable_internet": false',
                 '"competition_sources": [\n      "rsna-intracranial-aneurysm-detection"', "kaggle_utils/",
                 "would stop a real push"):
        assert text in out, text
    assert "__pycache__" not in out
