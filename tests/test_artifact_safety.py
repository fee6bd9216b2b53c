"""The compiler never loses a user's files: what `-o` may replace is exactly an earlier
artifact's own files, a compile appears whole or not at all, and a refused or failing one
leaves every byte on disk as it was (runtime/artifact.py StagedArtifact).

The CLI runs in-process through main(), on tiny-llama without nvcc; the user's files are
fresh random bytes each run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tilert_compiler.cli import main as compile_main
from tilert_compiler.runtime.artifact import (
    OWN_FILES,
    OutputError,
    is_artifact,
    load_artifact,
    write_artifact,
)

CORPUS = Path(__file__).parent / "bad_inputs"
FAST = ["--no-nvcc", "--no-run", "-q"]


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under `root`, hidden ones too: a file's bytes, a link's target, a folder."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("folder",)
            else:
                out[rel] = p.read_bytes()
    return out


def user_files(folder: Path, names: list[str]) -> None:
    """A user's files of random bytes (and random sizes) at `names` under `folder`."""
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(random.randrange(1, 4096)))


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("tilert-compile: error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """An earlier artifact of this tool, with its IR dumps."""
    path = tmp_path_factory.mktemp("earlier") / "art"
    assert compile_main(["tiny-llama", *FAST, "--dump-ir", "-o", str(path)]) == 0
    return path


@pytest.fixture
def disk(tmp_path, earlier) -> Path:
    """A working folder full of a user's files: a folder of their own (holding names an
    artifact uses), `<out>.old` siblings, a file, a link, and an earlier artifact with the
    user's files beside its own and in its ir/."""
    mine = ["kernel.cu", "manifest.json", "kernel.cubin", "tasks.npz", "resources.txt"]
    user_files(tmp_path / "user", [*mine, "prefill/notes.bin", "deep/er/data.bin", "x.bin"])
    user_files(tmp_path, ["user.old/keep.bin", "art.old/keep.bin", "a_file.bin"])
    (tmp_path / "link").symlink_to("user")
    shutil.copytree(earlier, tmp_path / "art")
    user_files(tmp_path / "art", ["mine.bin", "deep/notes.bin", "ir/notes.bin"])
    return tmp_path


def _refusals(d: Path) -> dict[str, list[str]]:
    bad_dump = d / "bad.tir"
    bad_dump.write_text("this is not an IR dump\n")
    return {
        "a folder of other files": ["tiny-llama", "-o", str(d / "user")],
        "--force where the user's kernel.cu is": ["tiny-llama", "--force", "-o", str(d / "user")],
        "-o a file": ["tiny-llama", "-o", str(d / "a_file.bin")],
        "-o under a file": ["tiny-llama", "-o", str(d / "a_file.bin" / "sub")],
        "-o a symlink": ["tiny-llama", "-o", str(d / "link")],
        "-o a symlink, --force": ["tiny-llama", "--force", "-o", str(d / "link")],
        "--pictures-layer 99": ["tiny-llama", "--pictures", "--pictures-layer", "99", "-o"],
        "--pictures-layer 99 into the user's folder": [
            "tiny-llama",
            "--pictures",
            str(d / "user" / "pics"),
            "--pictures-layer",
            "99",
            "-o",
        ],
        "--dump-ir a file": ["tiny-llama", "--dump-ir", str(d / "a_file.bin"), "-o"],
        "--dump-ir under a file": ["tiny-llama", "--dump-ir", str(d / "a_file.bin" / "ir"), "-o"],
        "--dump-ir a symlink": ["tiny-llama", "--dump-ir", str(d / "link"), "-o"],
        "an invalid model": [str(CORPUS / "heads_not_multiple_of_kv_heads.yaml"), "-o"],
        "an invalid model onto the user's folder": [
            str(CORPUS / "bad_dtype.yaml"),
            "-o",
            str(d / "user"),
        ],
        "a bad option value": ["tiny-llama", "--stage-kb", "0", "-o"],
        "a dump that does not parse": ["--from-ir", str(bad_dump), "-o"],
    }


def test_refused_and_failing_compiles_leave_every_byte(disk, capsys):
    pytest.importorskip("matplotlib")
    refusals = _refusals(disk)
    before = snapshot(disk)
    for case, args in refusals.items():
        if args[-1] == "-o":  # onto the earlier artifact
            args = [*args, str(disk / "art")]
        rc = compile_main([*args, *FAST])
        line = one_error_line(capsys.readouterr().err)
        assert rc == 2, case
        assert snapshot(disk) == before, f"{case} ({line}) changed the disk"


def test_the_refusals_say_why(disk, capsys):
    said = {
        "user": "is a folder of other files, not a tilert-compile artifact",
        "a_file.bin": "is a file, not a folder",
        "link": "is a symbolic link",
    }
    for name, fragment in said.items():
        assert compile_main(["tiny-llama", *FAST, "-o", str(disk / name)]) == 2
        assert fragment in one_error_line(capsys.readouterr().err)


def _artifact_files(folder: Path) -> dict[str, bytes]:
    """The artifact's own files under `folder`, by path."""
    return {n: (folder / n).read_bytes() for n in OWN_FILES if (folder / n).is_file()}


def test_a_recompile_replaces_the_artifact_whole_and_a_failing_one_leaves_it(disk, capsys):
    pytest.importorskip("matplotlib")
    art = disk / "art"
    (art / "resources.txt").write_text("the earlier build's ptxas report\n")  # an own file
    kept = {k: v for k, v in snapshot(art).items() if "notes" in k or k == "mine.bin"}
    old_dumps = {p.name: p.read_bytes() for p in (art / "ir").glob("*.tir")}
    other = ["tiny-llama", "--max-seq-len", "32", "--dump-ir", "--pictures"]
    assert compile_main([*other, *FAST, "-o", str(art)]) == 0
    # Whole: the same files, byte for byte, as the same compile into a new folder.
    assert compile_main([*other, *FAST, "-o", str(disk / "fresh")]) == 0
    new = _artifact_files(art)
    assert new == _artifact_files(disk / "fresh")
    assert "resources.txt" not in new  # the earlier build's own file went with it
    assert load_artifact(art).manifest["config"]["max_seq_len"] == 32
    after = snapshot(art)
    assert all(after[k] == v for k, v in kept.items())  # the user's files, where they were
    assert {p.name for p in (art / "ir").glob("*.tir")} == set(old_dumps)
    assert (art / "ir" / "00-graph.tir").read_bytes() != old_dumps["00-graph.tir"]
    assert (art / "pictures" / "schedule.svg").is_file()
    assert sorted(p.name for p in disk.iterdir() if p.name.startswith(".")) == []
    # A recompile that fails after the artifact is written leaves it byte-identical.
    capsys.readouterr()
    before = snapshot(disk)
    rc = compile_main(["tiny-llama", *FAST, "--pictures", "--pictures-layer", "99", "-o", str(art)])
    assert rc == 2 and "no tasks in layer 99" in one_error_line(capsys.readouterr().err)
    assert snapshot(disk) == before


def test_force_puts_the_artifact_beside_the_users_files(tmp_path, capsys):
    user_files(tmp_path / "f", ["model.safetensors", "notes/a.bin", "config.json"])
    before = snapshot(tmp_path / "f")
    assert compile_main(["tiny-llama", *FAST, "--force", "-o", str(tmp_path / "f")]) == 0
    assert is_artifact(tmp_path / "f")
    after = snapshot(tmp_path / "f")
    assert all(after[k] == v for k, v in before.items())
    # Now an earlier artifact: a recompile needs no --force and keeps the user's files.
    assert (
        compile_main(["tiny-llama", *FAST, "--max-seq-len", "32", "-o", str(tmp_path / "f")]) == 0
    )
    after = snapshot(tmp_path / "f")
    assert all(after[k] == v for k, v in before.items())
    assert load_artifact(tmp_path / "f").manifest["config"]["max_seq_len"] == 32
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_an_empty_folder_takes_the_artifact(tmp_path, earlier):
    (tmp_path / "empty").mkdir()
    write_artifact(tmp_path / "empty", load_artifact(earlier))
    assert is_artifact(tmp_path / "empty")
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_a_build_without_nvcc_does_not_replace_a_cubin(disk, capsys):
    art = disk / "art"
    (art / "kernel.cubin").write_bytes(os.urandom(256))  # as if nvcc had built it
    before = snapshot(disk)
    # docs/inspecting.md's command, onto the folder a build with a cubin wrote
    inspect = ["tiny-llama", "--no-nvcc", "--no-run", "--dump-ir", "--explain", "-q"]
    assert compile_main([*inspect, "-o", str(art)]) == 2
    assert "this build makes none (--no-nvcc" in one_error_line(capsys.readouterr().err)
    assert snapshot(disk) == before
    assert compile_main([*inspect, "-o", str(disk / "inspect")]) == 0  # as the docs say
    assert compile_main([*inspect, "--force", "-o", str(art)]) == 0
    assert not (art / "kernel.cubin").exists() and (art / "mine.bin").exists()


def test_dumps_into_a_folder_of_the_users_replace_only_their_own_names(tmp_path):
    user_files(tmp_path / "dumps", ["keep.bin", "sub/keep.bin"])
    (tmp_path / "dumps" / "00-graph.tir").write_text("an old dump\n")
    before = snapshot(tmp_path / "dumps")
    args = ["--dump-ir", str(tmp_path / "dumps"), "-o", str(tmp_path / "out")]
    assert compile_main(["tiny-llama", *FAST, *args]) == 0
    after = snapshot(tmp_path / "dumps")
    assert all(after[k] == v for k, v in before.items() if "keep" in k)
    assert after["00-graph.tir"].startswith(b"# tilert-compile IR")
    assert "06-layout.tir" in after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dumps", "out"]


def test_the_library_refuses_what_the_cli_refuses(disk):
    art = load_artifact(disk / "art")
    before = snapshot(disk)
    for name in ("user", "a_file.bin", "link"):
        with pytest.raises(OutputError):
            write_artifact(disk / name, art)
    assert snapshot(disk) == before
    write_artifact(disk / "user" / "new", art)  # a new folder inside one of theirs
    assert is_artifact(disk / "user" / "new")


# ------------------------------------------------------------------ interrupted


def test_an_interrupt_while_writing_leaves_the_earlier_artifact(disk, capsys, monkeypatch):
    import tilert_compiler.dumps

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tilert_compiler.dumps, "write_dumps", interrupted)
    before = snapshot(disk)
    rc = compile_main(["tiny-llama", *FAST, "--dump-ir", "-o", str(disk / "art")])
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert snapshot(disk) == before


def test_a_signal_while_renaming_waits_until_the_artifact_is_whole(disk, capsys, monkeypatch):
    import tilert_compiler.runtime.artifact as artifact

    real = artifact._move_into

    def signalled(*a, **k):  # the old folder is aside, the new one in place: mid-commit
        os.kill(os.getpid(), signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(artifact, "_move_into", signalled)
    kept = (disk / "art" / "mine.bin").read_bytes()
    # Ctrl-C raises KeyboardInterrupt, as in a terminal (a background job ignores SIGINT).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc = compile_main(["tiny-llama", *FAST, "--max-seq-len", "32", "-o", str(disk / "art")])
    finally:
        signal.signal(signal.SIGINT, before)
    assert rc == 130
    assert load_artifact(disk / "art").manifest["config"]["max_seq_len"] == 32
    assert (disk / "art" / "mine.bin").read_bytes() == kept
    assert [p for p in disk.iterdir() if p.name.startswith(".")] == []


def test_sigterm_while_writing_leaves_no_temporary_files(disk):
    # In a child process, so that SIGTERM takes the CLI's own path: pictures stall until
    # the signal comes, while the new artifact sits in its temporary folder.
    code = (
        "import os, signal, sys, time\n"
        "import tilert_compiler.pictures as p\n"
        "def stall(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
        "p.write_pictures = stall\n"
        "from tilert_compiler.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    before = snapshot(disk)
    args = ["tiny-llama", *FAST, "--pictures", "--dump-ir", "-o", str(disk / "art")]
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 143, r.stderr
    assert "terminated" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(disk) == before
