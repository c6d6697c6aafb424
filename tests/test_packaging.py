"""Packaging and docs a new user or packager reads: the README's install command is the
one CI runs, torch is a range with the CPU pin in constraints.txt, extras keep the core
small, benchmarks are not installed, and the docs link only to files in the repo."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_install() -> str:
    block = re.search(r"## Install\n\n```bash\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S).group(1)
    return block.strip()


def test_readme_install_is_what_ci_runs():
    install = readme_install()
    assert install == 'python -m pip install -e ".[cpu,cli,export,eval,dev,serve,ray,kernels]" -c constraints.txt'
    ci = (ROOT / ".ci" / "run").read_text()
    assert install.replace("install -e", "install -q -e") in ci
    assert ci.rstrip().endswith("python -m pytest -q")


def test_torch_is_a_range_pinned_by_the_constraints_file():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    torch = [r for r in extras["export"] if r.startswith("torch")]
    assert torch == ["torch>=2.4"]
    pins = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    assert "torch==2.13.0" in pins


def test_core_dependencies_are_minimal_and_extras_bring_the_rest():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = config["project"]
    core = {re.split(r"[<>=!~ ]", r)[0] for r in project["dependencies"]}
    assert core == {"numpy", "tokenizers", "soundfile", "scipy"}
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["onnxruntime>=1.18"] and extras["gpu"] == ["onnxruntime-gpu>=1.18"]
    assert {re.split(r"[<>=]", r)[0] for r in extras["cli"]} == {"tqdm", "matplotlib"}
    readme = (ROOT / "README.md").read_text()
    for extra in extras:  # the README says what each extra brings
        assert f"| `{extra}` |" in readme, extra
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["editgen*"]  # no benchmarks


def test_docs_link_only_to_files_in_the_repo():
    for doc in ("README.md", "docs/design.md", "docs/benchmarks.md"):
        text = (ROOT / doc).read_text()
        assert "../shared" not in text and "ARCHITECTURE.md" not in text, doc
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if not target.startswith("http"):
                assert ((ROOT / doc).parent / target).exists(), (doc, target)


def test_no_merge_conflict_markers_in_tracked_files():
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for name in files:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".txt", ".cfg", ".yml", ".yaml") and name != ".ci/run":
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======":
                bad.append(f"{name}:{number}")
    assert not bad, bad


def test_the_cpu_kernel_sources_ship_with_the_package():
    """The CPU kernels are compiled from their sources on first use: the wheel must carry them."""
    import fnmatch

    from editgen.kernels.cpu_library import sources

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["editgen"]
    files = [str(p.relative_to(ROOT / "editgen")) for p in sources()]
    assert any(f.endswith(".cc") for f in files) and any(f.endswith(".h") for f in files)
    assert all(any(fnmatch.fnmatch(f, glob) for glob in data) for f in files), (files, data)
