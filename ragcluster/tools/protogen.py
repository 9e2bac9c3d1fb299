"""Generate the gRPC stubs in ragcluster/v1 from protos/, or check they are current.

    python -m ragcluster.tools.protogen           # regenerate
    python -m ragcluster.tools.protogen --check   # exit 1 if the committed stubs differ from protos/
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "ragcluster" / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """A protoc plugin installed with mypy-protobuf: next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]') for mypy-protobuf")
    return found


def _generate(dest_root: Path) -> Path:
    from grpc_tools import protoc  # dev dependency, imported only here

    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "ragcluster" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={dest_root}",
        f"--grpc_python_out={dest_root}",
        # typed stubs (.pyi) for the messages and the grpc stubs/servicers, from mypy-protobuf
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out=quiet:{dest_root}",
        f"--mypy_grpc_out=quiet:{dest_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return dest_root / "ragcluster" / "v1"


def _generated_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(GENERATED_SUFFIXES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fresh = _generate(Path(tmp))
        fresh_files = _generated_files(fresh)
        if args.check:
            current = _generated_files(OUT_DIR) if OUT_DIR.exists() else []
            stale = sorted(set(fresh_files) ^ set(current))
            stale += [n for n in fresh_files if n in current and not filecmp.cmp(fresh / n, OUT_DIR / n, shallow=False)]
            if stale:
                print(f"stale stubs in {OUT_DIR}: {', '.join(stale)} — run `make protos`", file=sys.stderr)
                return 1
            print(f"stubs current ({len(fresh_files)} files)")
            return 0
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        for name in _generated_files(OUT_DIR):
            (OUT_DIR / name).unlink()
        for name in fresh_files:
            shutil.copyfile(fresh / name, OUT_DIR / name)
        (OUT_DIR / "__init__.py").write_text('"""Generated gRPC stubs (make protos). Do not edit."""\n')
        print(f"wrote {len(fresh_files)} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
