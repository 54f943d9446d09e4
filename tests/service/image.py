"""The serving image without a Docker engine: the Dockerfile read as data, its build context filtered
by `.dockerignore` as Docker filters it, and the files its COPY lines take laid out in a folder, so
that a test can run the image's own checks and command on exactly the code the image would hold."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def stages(dockerfile: str) -> dict[str, str]:
    """Dockerfile stage name -> its text (FROM line included)."""
    parts = re.split(r"^(?=FROM )", dockerfile, flags=re.M)[1:]
    return {re.match(r"FROM \S+ AS (\S+)", p).group(1): p for p in parts}  # type: ignore[union-attr]


def instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a stage, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", "\n".join(ln for ln in stage.splitlines() if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0], ln.split(None, 1)[1].strip()) for ln in joined.splitlines() if ln.strip()]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore pattern (Go's filepath.Match plus `**`) as a regex over a relative path."""
    if "\\" in pattern:
        raise ValueError(f".dockerignore pattern {pattern!r}: escapes are not handled here")
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
        elif pattern[i] == "[":  # a character class, `[^...]` negated as in Go
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            out, i = out + ("[^/" + body[1:] if body.startswith("^") else "[" + body) + "]", end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@dataclass
class DockerIgnore:
    """`.dockerignore`: the last pattern matching a path or one of its parent folders decides."""

    rules: list[tuple[re.Pattern[str], bool]] = field(default_factory=list)  # (pattern, excludes)

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        rules = []
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            cleaned = line.lstrip("!").strip().strip("/").removeprefix("./")
            rules.append((_pattern_regex(cleaned), not keep))
        return cls(rules)

    def excludes(self, rel: str) -> bool:
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for regex, excludes in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                excluded = excludes
        return excluded


def build_context(repo: Path = REPO) -> list[str]:
    """The files `docker build .` would send: every file under `repo` that .dockerignore keeps
    (the folders git ignores, the venvs and artifacts among them, are skipped without being read)."""
    ignore = DockerIgnore.read(repo / ".dockerignore")
    kept = []
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if rel.split("/", 1)[0] in {".git", ".venv", ".venv-image", "artifacts"}:
            continue
        if path.is_file() and not ignore.excludes(rel):
            kept.append(rel)
    return kept


def copy_stage(stage: str, dest: Path, repo: Path = REPO) -> list[str]:
    """Lays out in `dest` (the stage's WORKDIR) what the stage's COPY lines from the build context
    take: a source outside the context fails as `docker build` would. The optional-bundle COPY
    (`${BUNDLE...}`) is left out. Returns the files copied, relative to `dest`."""
    context = build_context(repo)
    copied: list[str] = []
    for op, args in instructions(stage):
        if op != "COPY" or args.startswith("--from") or args.startswith("${"):
            continue
        src, target = args.split()
        if target.startswith("/"):  # e.g. the lock file into /tmp: not part of the code
            continue
        copied += [out.relative_to(dest).as_posix() for out in copy_from_context(context, src, dest / target, repo)]
    return copied


def copy_from_context(context: list[str], src: str, target: Path, repo: Path = REPO) -> list[Path]:
    """`COPY src target` from the build context's files (`build_context`): a source outside the
    context fails as `docker build` would. Returns the paths written."""
    files = [f for f in context if f == src or f.startswith(src.rstrip("/") + "/")]
    if not files:
        raise FileNotFoundError(f"COPY {src}: not in the build context (.dockerignore keeps it out, or it is gone)")
    written = []
    for rel in files:
        out = target / Path(rel).relative_to(src) if rel != src else target
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, out)
        written.append(out)
    return written


def expand(text: str, values: Mapping[str, str]) -> str:
    """`${NAME:-default}` as Dockerfile ARGs and compose files expand it: the value when set and not
    empty, else the default."""
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", lambda m: values.get(m.group(1)) or m.group(2), text)


def env_of(stage: str) -> dict[str, str]:
    """The stage's ENV settings (`ENV A=1 B=2` form)."""
    env: dict[str, str] = {}
    for op, args in instructions(stage):
        if op == "ENV":
            env.update(kv.partition("=")[::2] for kv in shlex.split(args))
    return env


def python_checks(stage: str) -> list[list[str]]:
    """The `python -c ...` commands of the stage's RUN lines: the build-time checks of the code."""
    checks = []
    for op, args in instructions(stage):
        if op == "RUN":
            for part in args.split("&&"):
                words = shlex.split(part)
                if words[:2] == ["python", "-c"]:
                    checks.append(words)
    return checks


def cmd_of(stage: str) -> list[str]:
    (cmd,) = [json.loads(args) for op, args in instructions(stage) if op == "CMD"]
    return list(cmd)


def healthcheck_of(stage: str) -> list[str]:
    (args,) = [args for op, args in instructions(stage) if op == "HEALTHCHECK"]
    return shlex.split(args.split(" CMD ", 1)[1])


def tracked_copy(dest: Path, repo: Path = REPO) -> Path:
    """The repository's tracked files, as a clean checkout has them, copied to `dest`: a build from
    it cannot pick up a stale build/ folder or untracked files of the working tree."""
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if (repo / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, dest / rel)
    return dest


def venv_over(site_packages: str, dest: Path, python: str | Path) -> Path:
    """A venv of `python` at `dest` without pip that sees `site_packages` through a path entry (a
    path line of a .pth file: the .pth files in that folder, e.g. an editable install's, are not
    read). Returns its interpreter."""
    subprocess.run([str(python), "-m", "venv", "--without-pip", str(dest)], check=True)
    (own,) = (dest / "lib").glob("python*/site-packages")
    (own / "over.pth").write_text(site_packages + "\n")
    return dest / "bin" / "python"
