"""Start the MONAI Label server with the project's app and safe defaults.

    python -m diskrobust.serving.launch --studies DIR [--port 8000] [--host 127.0.0.1] [--conf KEY VALUE ...]

What ``monailabel start_server`` does, with: ``--app`` defaulting to the repository's ``app/`` folder,
``--host`` to 127.0.0.1 (monailabel's own default is 0.0.0.0, every interface), and ``--conf sam2
false`` (the optional SAM2 package is not looked for). Every other argument goes to monailabel as is.
"""

from __future__ import annotations

import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[3] / "app"


def server_argv(argv: list[str]) -> list[str]:
    """monailabel's arguments for ours (the defaults added where the caller gave none)."""
    args = list(argv)
    if "--app" not in args and "-a" not in args:
        if not (APP_DIR / "main.py").is_file():
            raise SystemExit(f"the app folder was not found next to the package ({APP_DIR.name}/main.py); "
                             "pass --app <repository>/app")
        args = ["--app", str(APP_DIR)] + args
    if "--host" not in args and "-i" not in args:
        args += ["--host", "127.0.0.1"]
    confs = {args[k + 1] for k, a in enumerate(args[:-1]) if a in ("--conf", "-c")}
    if "sam2" not in confs:
        args += ["--conf", "sam2", "false"]
    return ["start_server"] + args


def main(argv: list[str] | None = None) -> None:
    from monailabel.main import Main

    sys.argv = ["monailabel"] + server_argv(sys.argv[1:] if argv is None else argv)
    Main().run()


if __name__ == "__main__":
    main()
