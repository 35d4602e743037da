"""The disk fills during an artifact write: a clear error, nothing partial published (case 12)."""

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import resource, signal, sys
    from pathlib import Path
    from tasks.core.store import LocalStore
    store = LocalStore(sys.argv[1])
    big = Path(sys.argv[2])
    # The file-size limit stands in for a full disk: writes past it fail with EFBIG, like ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        store.put_file(big, kind="gguf")
    except OSError as exc:
        print("OSError", exc.errno)
        sys.exit(3)
    print("stored")
""")


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    big = tmp_path / "model.gguf"
    big.write_bytes(b"\\1" * (3 << 20))
    store_dir = tmp_path / "store"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(store_dir), str(big)], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "OSError 27" in proc.stdout  # EFBIG
    leftovers = [p for p in store_dir.rglob("*") if p.is_file()]
    assert leftovers == [], f"partial files were left in the store: {leftovers}"

    from tasks.core.store import LocalStore

    ref = LocalStore(store_dir).put_file(big, kind="gguf")  # with room, the same write succeeds
    assert LocalStore(store_dir).verify(ref)
