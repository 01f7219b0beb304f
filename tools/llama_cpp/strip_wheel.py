"""Drop the CPU backend copies that llama.cpp's own install rules put in the wheel's `bin/`.

In a GGML_BACKEND_DL build ggml installs every CPU variant, the AMX one included, into
CMAKE_INSTALL_BINDIR, which ends up as `site-packages/bin/`. mi-llm loads variants only from
llama_cpp/lib (the ones cpu_variants.cmake installs there), so the copies are dead weight and
would ship the AMX kernels. Rewrites the wheel without them and without their RECORD lines.

    python strip_wheel.py IN.whl OUT_DIR
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def strip(src: Path, out_dir: Path) -> Path:
    dest = out_dir / src.name
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if item.filename.startswith("bin/libggml-"):
                continue
            data = zin.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith("bin/libggml-")).encode()
            zout.writestr(item, data)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: strip_wheel.py IN.whl OUT_DIR")
    print(strip(Path(sys.argv[1]), Path(sys.argv[2])))
