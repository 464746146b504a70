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
counter = Path(os.environ["FAKE_KAGGLE_LOG"] + ".failures")
failed = int(counter.read_text()) if counter.exists() else 0
if failed < int(os.environ.get("FAKE_KAGGLE_FAIL_FIRST", "0")):  # a flaky network: the first N calls fail
    counter.write_text(str(failed + 1))
    print("503 Server Error: Service Unavailable", file=sys.stderr)
    sys.exit(1)
made = Path(os.environ["FAKE_KAGGLE_LOG"] + ".made")
if argv[:2] == ["datasets", "create"] and os.environ.get("FAKE_KAGGLE_CREATE_LATE_FAIL"):
    made.write_text(record["meta"]["id"])  # the dataset is made, then the call fails (a dropped connection)
    sys.exit(1)
if argv[:2] == ["datasets", "list"]:
    assert "--mine" in argv and "--csv" in argv, argv
    mine = [r for r in os.environ.get("FAKE_KAGGLE_EXISTING", "").split(",") if r]
    mine += [made.read_text()] if made.exists() else []
    if not mine:
        print("No datasets found")  # what the CLI prints (no table) when you own none
        sys.exit(0)
    paged = os.environ.get("FAKE_KAGGLE_PAGED") and "--page-token" not in argv
    if paged:
        print("Next Page Token = tok2")
    rows = mine[:1] if paged else (mine[1:] if os.environ.get("FAKE_KAGGLE_PAGED") else mine)
    print("ref,title,size,lastUpdated,downloadCount,voteCount,usabilityRating")
    print('someone/else,"404 Not Found, a title that says it",1,2025-01-01,0,0,0.5')  # English text decides nothing
    for ref in rows:
        print(f"{{ref}},A dataset,1234,2025-10-01 10:00:00,0,0,1.0")
    sys.exit(0)
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
    for tag in ("cp311", "cp312"):
        for name in kp.requirement_names(repo / "kaggle_wheels.txt"):
            write(wheels / tag / f"{name.replace('-', '_')}-1.0-{tag}-{tag}-manylinux_2_17_x86_64.whl", "wheel")
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
    monkeypatch.setattr(kp, "RETRY_DELAYS_S", (0.0,))
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


LIST_MINE = ["datasets", "list", "--mine", "--csv", "--page-size", "200"]


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
        LIST_MINE,  # once: the structured answer for every dataset of the push
        ["datasets", "version", "-p", f"{st}/code", "-r", "zip", "-m", "v1"],
        ["datasets", "create", "-p", f"{st}/wheels", "-r", "zip"],
        ["datasets", "create", "-p", f"{st}/cache", "-r", "zip"],
        ["datasets", "create", "-p", f"{st}/run-baseline", "-r", "zip"],
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
    wheels_tree = by_folder["wheels"]["tree"]  # kaggle_wheels.txt and one set of 7 wheels per Python
    assert "kaggle_wheels.txt" in wheels_tree and len(wheels_tree) == 2 + 2 * 7
    assert {r.split("/")[0] for r in wheels_tree if r.endswith(".whl")} == {"cp311", "cp312"}
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


# Which source wins when several exist (the kaggle 2.x CLI's order: access token, then username + key with the
# environment over the file, then an OAuth login); the fixture's ~/.kaggle/kaggle.json is present in every case but
# the "xdg" ones.
@pytest.mark.parametrize(
    ("where", "wins"),
    [
        ("api_token_env", "access token (KAGGLE_API_TOKEN)"),  # over ~/.kaggle/kaggle.json and access_token
        ("access_token_file", "access token (access_token)"),  # ~/.kaggle/access_token over kaggle.json
        ("username_key_env", "username + key (KAGGLE_KEY + KAGGLE_USERNAME)"),  # the environment over the file
        ("key_env_user_file", "username + key ({home}/.kaggle/kaggle.json + KAGGLE_KEY)"),  # merged, as the CLI does
        ("config_dir", "username + key ({tmp}/cfg/kaggle.json)"),  # KAGGLE_CONFIG_DIR over ~/.kaggle
        ("xdg", "username + key ({tmp}/xdg/kaggle/kaggle.json)"),  # only when ~/.kaggle does not exist
        ("xdg_shadowed", None),  # an existing (empty) ~/.kaggle hides the XDG folder
        ("oauth", "OAuth login ({home}/.kaggle/credentials.json)"),  # last
        ("oauth_without_refresh_token", None),  # the CLI needs a refresh_token in credentials.json
    ],
)
def test_which_credential_source_wins(kit, monkeypatch, where, wins):
    home, tmp = kit["home"], kit["tmp"]
    legacy = home / ".kaggle" / "kaggle.json"
    assert kp.credential_source() == f"username + key ({legacy})"  # the fixture's own file, alone
    if where == "api_token_env":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "tok-env-value")
        write(home / ".kaggle" / "access_token", "tok-file-value")
    elif where == "access_token_file":
        write(home / ".kaggle" / "access_token", "tok-file-value")
    elif where == "username_key_env":
        monkeypatch.setenv("KAGGLE_USERNAME", "bob")
        monkeypatch.setenv("KAGGLE_KEY", "k-env-value")
    elif where == "key_env_user_file":
        legacy.write_text(json.dumps({"username": USER}))
        monkeypatch.setenv("KAGGLE_KEY", "k-env-value")
    elif where == "config_dir":
        write(tmp / "cfg" / "kaggle.json", json.dumps({"username": USER, "key": "k-cfg-value"}))
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp / "cfg"))
    elif where.startswith("xdg"):
        legacy.unlink()
        if where == "xdg":
            (home / ".kaggle").rmdir()
        write(tmp / "xdg" / "kaggle" / "kaggle.json", json.dumps({"username": USER, "key": "k-xdg-value"}))
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp / "xdg"))
    else:
        legacy.unlink()
        oauth = {"refresh_token": "r-value", "username": USER} if where == "oauth" else {"username": USER}
        write(home / ".kaggle" / "credentials.json", json.dumps(oauth))
    expected = None if wins is None else wins.format(home=home, tmp=tmp)
    assert kp.credential_source() == expected
    assert cli_auth_choice(monkeypatch, tmp) == cli_view_of(expected)  # the installed CLI makes the same choice


def cli_view_of(description: str | None) -> tuple[str, str | None] | None:
    """Our description as (the CLI's AuthMethod name, the kaggle.json the legacy keys came from, if any)."""
    if description is None:
        return None
    method = {"access token": "ACCESS_TOKEN", "username + key": "LEGACY_API_KEY", "OAuth login": "OAUTH"}
    kind, _, sources = description.partition(" (")
    files = [s for s in sources.rstrip(")").split(" + ") if s.endswith("kaggle.json")]
    return method[kind], files[0] if files else None


def cli_auth_choice(monkeypatch, tmp: Path) -> tuple[str, str | None] | None:
    """What the installed kaggle 2.x CLI authenticates with in this environment, without a network: its module is
    reloaded so its class-level config folder follows the current environment, an access token is taken as valid
    (the CLI asks the server) and an OAuth login yields an access token (the CLI refreshes it online)."""
    import importlib

    from kagglesdk import KaggleCredentials

    if "kaggle" not in sys.modules:  # `import kaggle` authenticates (online for a token): do it with no credentials
        with monkeypatch.context() as clean:
            for var in [v for v in os.environ if v.startswith("KAGGLE_")] + ["XDG_CONFIG_HOME"]:
                clean.delenv(var, raising=False)
            (tmp / "empty_home").mkdir(exist_ok=True)
            clean.setenv("HOME", str(tmp / "empty_home"))
            importlib.import_module("kaggle")
    cli = importlib.reload(importlib.import_module("kaggle.api.kaggle_api_extended"))
    api = cli.KaggleApi()
    monkeypatch.setattr(api, "_introspect_token", lambda token: USER)
    monkeypatch.setattr(KaggleCredentials, "get_access_token", lambda self: "oauth-access")
    try:
        api.authenticate()
    except SystemExit:  # no credential: the CLI prints its help and exits
        return None
    method = api.config_values["auth_method"]
    if method != "LEGACY_API_KEY":
        return method, None
    data = json.loads(Path(api.config).read_text()) if Path(api.config).is_file() else {}
    from_file = [k for k in ("username", "key") if data.get(k) and not os.environ.get(f"KAGGLE_{k.upper()}")]
    return method, api.config if from_file else None  # the CLI's own kaggle.json path


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
        (next(kit["wheels"].glob("cp312/python_gdcm*"))).unlink()
        kp.main(["push", "wheels"])
    assert not kit["log"].exists()


def test_listing_failures_are_retried_a_bounded_number_of_times(kit, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_KAGGLE_FAIL_FIRST", "3")  # every attempt fails: nothing is created or versioned
    with pytest.raises(kp.KagglePushError) as err:
        kp.main(["push", "code"])
    msg = str(err.value)
    assert "kaggle datasets list --mine --csv" in msg and "failed 3 times, last exit 1" in msg
    assert "503 Server Error" in msg and "\n" not in msg
    assert [c["argv"] for c in calls(kit)] == [LIST_MINE] * 3
    assert "attempt 1/3" in capsys.readouterr().err


def test_one_failed_call_is_retried_and_the_push_goes_on(kit, monkeypatch):
    monkeypatch.setenv("FAKE_KAGGLE_FAIL_FIRST", "1")
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", ds("rsna-iad-kit-code"))
    assert kp.main(["push", "code", "--stage-dir", str(kit["stage"])]) == 0
    assert [c["argv"][:2] for c in calls(kit)] == [["datasets", "list"]] * 2 + [["datasets", "version"]]


def test_create_or_version_follows_every_page_of_the_listing(kit, monkeypatch):
    """The answer is the CSV listing of your datasets, over all its pages; a dataset first listed on page 2 gets a
    new version, one that is listed nowhere (and the unrelated row titled "404 Not Found") changes nothing."""
    monkeypatch.setenv("FAKE_KAGGLE_PAGED", "1")
    monkeypatch.setenv("FAKE_KAGGLE_EXISTING", f"{ds('rsna-iad-kit-cache')},{ds('rsna-iad-kit-code')}")
    assert kp.main(["push", "code", "wheels", "cache", "--stage-dir", str(kit["stage"])]) == 0
    st = str(kit["stage"])
    assert [c["argv"] for c in calls(kit)] == [
        LIST_MINE,
        [*LIST_MINE, "--page-token", "tok2"],
        ["datasets", "version", "-p", f"{st}/code", "-r", "zip", "-m", f"kaggle_utils {kp.__version__}"],
        ["datasets", "create", "-p", f"{st}/wheels", "-r", "zip"],
        ["datasets", "version", "-p", f"{st}/cache", "-r", "zip", "-m", f"kaggle_utils {kp.__version__}"],
    ]
    assert kp.parse_dataset_listing("No datasets found\n") == (set(), None)
    assert kp.parse_dataset_listing("Next Page Token = t9\nref,title\nAlice/X-Y,t\n") == ({"alice/x-y"}, "t9")


def test_a_failed_create_is_not_repeated_when_the_dataset_now_exists(kit, monkeypatch):
    """A create that reports failure but made the dataset is seen in a fresh listing, and is not created twice."""
    monkeypatch.setenv("FAKE_KAGGLE_CREATE_LATE_FAIL", "1")
    assert kp.main(["push", "code", "--stage-dir", str(kit["stage"])]) == 0
    assert [c["argv"][:2] for c in calls(kit)] == [["datasets", "list"], ["datasets", "create"], ["datasets", "list"]]


def test_placeholder_username_only_passes_a_dry_run(kit, capsys):
    edit_settings(kit, f"username: {USER}", f"username: {kp.USERNAME_PLACEHOLDER}")
    assert kp.main(["push", "code", "--dry-run"]) == 0
    assert "placeholder" in capsys.readouterr().out
    with pytest.raises(kp.KagglePushError, match="placeholder"):
        kp.main(["push", "code"])
    assert kp.main(["push", "code", "--username", "carol", "--stage-dir", str(kit["stage"])]) == 0
    assert [c["argv"][:2] for c in calls(kit)] == [["datasets", "list"], ["datasets", "create"]]
    assert calls(kit)[1]["meta"]["id"] == "carol/rsna-iad-kit-code"


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
              ("datasets", "list"): ["-m, --mine", "-v, --csv", "--page-size", "--page-token"],
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
with open(sys.argv[0] + ".args", "a") as log:
    log.write(" ".join(args) + "\\n")
dest = Path(args[args.index("-d") + 1])
tag = args[args.index("--abi") + 1]
for line in Path(args[args.index("-r") + 1]).read_text().splitlines():
    name = line.split("#")[0].split("==")[0].strip()
    if name and name != "{skip}":
        (dest / (name.replace("-", "_") + f"-1.0-{{tag}}-{{tag}}-manylinux_2_31_x86_64.whl")).write_text("w")
"""
KAGGLE_PLATFORMS = [f"manylinux_2_{m}_x86_64" for m in range(35, 16, -1)] + ["manylinux2014_x86_64"]


def test_platform_tags_reach_kaggles_glibc():
    """pylibjpeg-libjpeg 2.5.0 ships only manylinux_2_31 / 2_34 wheels: both must be asked for, up to Kaggle's 2_35."""
    tags = kp.platform_tags("2.35", "x86_64")
    assert tags == KAGGLE_PLATFORMS
    assert {"manylinux_2_31_x86_64", "manylinux_2_34_x86_64", "manylinux_2_17_x86_64"} <= set(tags)
    assert "manylinux_2_36_x86_64" not in tags
    with pytest.raises(kp.KagglePushError, match="must look like 2.35"):
        kp.platform_tags("3.1", "x86_64")


@pytest.mark.parametrize("version", ["3.11", "3.12"])
def test_wheels_command_line_for_each_python(kit, version):
    s = kp.load_settings()
    tag = "cp" + version.replace(".", "")
    cmd = kp.wheels_command(s, Path("/w"), version)
    assert cmd[: len(kp.PIP_COMMAND)] == list(kp.PIP_COMMAND)
    args = cmd[len(kp.PIP_COMMAND):]
    platforms = [args[i + 1] for i, a in enumerate(args) if a == "--platform"]
    assert args[:8] == ["download", "--only-binary=:all:", "--python-version", version, "--implementation", "cp",
                        "--abi", tag]
    assert platforms == KAGGLE_PLATFORMS
    assert args[-4:] == ["-d", f"/w/{tag}", "-r", str(kit["repo"] / "kaggle_wheels.txt")]


@pytest.mark.parametrize("skip", ["", "python-gdcm"])
def test_wheels_download_one_set_per_python(kit, monkeypatch, capsys, skip):
    fake = write(kit["tmp"] / "bin" / "pip", FAKE_PIP.format(python=sys.executable, skip=skip))
    fake.chmod(0o755)
    monkeypatch.setattr(kp, "PIP_COMMAND", (str(fake),))
    dest = kit["tmp"] / "new_wheels"
    assert kp.main(["wheels", "--wheels-dir", str(dest), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("--python-version 3.11") == 1 and out.count("--python-version 3.12") == 1
    assert not dest.exists() and not Path(str(fake) + ".args").exists()
    if skip:
        with pytest.raises(kp.KagglePushError, match=r"cp311: no wheel for \['python-gdcm'\]"):
            kp.main(["wheels", "--wheels-dir", str(dest)])
        return
    assert kp.main(["wheels", "--wheels-dir", str(dest)]) == 0
    runs = Path(str(fake) + ".args").read_text().splitlines()
    assert [r.split()[r.split().index("--python-version") + 1] for r in runs] == ["3.11", "3.12"]
    req = dest / "kaggle_wheels.txt"
    assert req.is_file() and {"pylibjpeg", "python-gdcm"} <= set(kp.requirement_names(req))
    for tag in ("cp311", "cp312"):
        assert kp.missing_wheels(req, dest / tag) == []
        assert all(f"-{tag}-" in p.name for p in (dest / tag).glob("*.whl"))
    out = capsys.readouterr().out
    assert "cp311: 7 wheels" in out and "cp312: 7 wheels" in out
    # Only some Pythons: --python narrows the download.
    Path(str(fake) + ".args").unlink()
    assert kp.main(["wheels", "--wheels-dir", str(dest), "--python", "3.12"]) == 0
    assert len(Path(str(fake) + ".args").read_text().splitlines()) == 1


def test_wheels_upload_needs_every_listed_python(kit):
    import shutil

    shutil.rmtree(kit["wheels"] / "cp312")
    with pytest.raises(kp.KagglePushError, match=r"cp312 \(Python 3.12\) lacks"):
        kp.main(["push", "wheels"])
    assert not kit["log"].exists()


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
    for text in ("kaggle datasets list --mine --csv --page-size 200",
                 f"when {user}/rsna-iad-kit-code is in the listing",
                 "a new kernel gets today's default image (Python 3.12)", "wheels are built for Python 3.11, 3.12",
                 "kaggle kernels push -p '<tmp>/kernel-inference'", '"enable_internet": false',
                 '"competition_sources": [\n      "rsna-intracranial-aneurysm-detection"', "kaggle_utils/",
                 "would stop a real push"):
        assert text in out, text
    assert "__pycache__" not in out
