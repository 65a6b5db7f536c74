import os
import signal
import stat
import subprocess
import sys
import textwrap

import pytest

from helpers.lib.paths import REPO, atomic_dir, atomic_write_json, atomic_write_text


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set the umask for one test (restored after)."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def child(parent, body):
    """A Python process that builds `parent/out` in `atomic_dir`, prints its temp dir, then runs `body`."""
    code = textwrap.dedent(f"""
        import os, signal, sys, time
        from pathlib import Path
        from helpers.lib.paths import atomic_dir
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started in background
        with atomic_dir(Path({str(parent)!r}) / "out") as tmp:
            (tmp / "weights").write_bytes(b"x" * 1000)
            print(tmp, flush=True)
            {body}
    """)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def partials(parent):
    return sorted(p.name for p in parent.glob(".*.partial"))


# --- item 5: no orphaned temporary directories -----------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_the_temporary_directory(tmp_path, sig):
    proc = child(tmp_path, "time.sleep(60)")
    tmp = proc.stdout.readline().strip()
    assert tmp.endswith(".partial") and f"-{proc.pid}." in tmp  # the temp dir names the process that made it
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert partials(tmp_path) == [] and not (tmp_path / "out").exists()


def test_stale_partial_of_a_dead_process_is_removed_on_start(tmp_path, capsys):
    proc = child(tmp_path, "os.kill(os.getpid(), signal.SIGKILL)")  # no cleanup possible
    tmp = proc.stdout.readline().strip()
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and partials(tmp_path) == [os.path.basename(tmp)]
    (tmp_path / ".notes.partial").mkdir()  # not an atomic_dir temporary: left alone
    with atomic_dir(tmp_path / "mine") as live:
        with atomic_dir(tmp_path / "nested"):  # a live process's temporary (this one's) is kept
            assert live.is_dir()
    assert partials(tmp_path) == [".notes.partial"] and (tmp_path / "mine").is_dir()
    err = capsys.readouterr().err
    assert f"removed {tmp}: an unfinished temporary directory of process {proc.pid}, which is no longer running" in err


# --- item 9: outputs get the umask's permissions -------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask, dir_mode, file_mode",
    [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600), (0o002, 0o775, 0o664)],
    ids=["022", "077", "002"],
)
def test_outputs_get_umask_permissions(tmp_path, umask, mask, dir_mode, file_mode):
    umask(mask)
    with atomic_dir(tmp_path / "d") as tmp:
        atomic_write_json(tmp / "record.json", {"a": 1})
    assert mode(tmp_path / "d") == dir_mode and mode(tmp_path / "d" / "record.json") == file_mode
    assert mode(atomic_write_text(tmp_path / "report.html", "<p>")) == file_mode
