"""Mutation testing of the rules: flip each comparison, shift each boundary, swap and/or and
max/min in the rule code, run the rule tests against each mutant, and print what survived.

    .venv/bin/python scripts/mutate.py [--only lua|python|engine] [--list]

Targets: the Python rules (engine/decisions.py, against the model and memory store rows and
the differential test), the Lua script (against the single-Redis rows and differential test)
and the engine's budget lines (against tests/engine/test_engine.py). One mutant at a time is
written over the file and the file is restored afterwards, whatever happens. A survivor is
either a missing test or an equivalent mutant; EQUIVALENT below lists the known equivalents,
each with the reason, so the count of survivors that need a test stays at zero.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "server" / "sendonce_server"
PYTEST = [str(ROOT / ".venv" / "bin" / "pytest"), "-x", "-q", "-p", "no:cacheprovider"]
RULES = ["tests/rules/test_table.py", "tests/rules/test_differential.py"]

PY_SWAPS = [
    (r"(?<![<>=!])>=(?!=)", ">"),
    (r"(?<![<>=!-])>(?![=>])", ">="),
    (r"<=", "<"),
    (r"(?<![<])<(?![=<])", "<="),
    (r"==", "!="),
    (r"!=", "=="),
    (r"\bis not\b", "is"),
    (r"\bis\b(?! not)", "is not"),
    (r"\band\b", "or"),
    (r"\bor\b", "and"),
    (r"\bmax\(", "min("),
    (r"\bmin\(", "max("),
    (r"\+= 1\b", "+= 2"),
    (r"\bnot (?!in\b)", ""),
    (r"\bTrue\b", "False"),
    (r"\bFalse\b", "True"),
]
LUA_SWAPS = [
    (r"(?<![<>=~])>=", ">"),
    (r"(?<![<>=~-])>(?!=)", ">="),
    (r"<=", "<"),
    (r"(?<![<])<(?!=)", "<="),
    (r"==", "~="),
    (r"~=", "=="),
    (r"\band\b", "or"),
    (r"\bor\b", "and"),
    (r"math\.max\(", "math.min("),
    (r"math\.min\(", "math.max("),
    (r"\+ 1\b", "+ 2"),
    (r"\bnot ", ""),
    (r"\btrue\b", "false"),
    (r"\bfalse\b", "true"),
]


@dataclass(frozen=True)
class Target:
    name: str
    path: Path
    swaps: list[tuple[str, str]]
    tests: list[str]
    comment: str
    lines: str = ""  # a regex: only the lines that match are mutated (empty: every line)


ENGINE = SERVER / "engine"
# The engine's budget lines: where a count, persisted_attempts or the budget is compared or folded.
BUDGET = r"attempts?\b.*(>=|>|<|<=)|(>=|>).*max_attempts|(max|min)\(.*attempt"
TARGETS = [
    # The Python rules: the table's rows on the pure model (the memory and SQLite stores run the
    # same functions on the same inputs), and the differential test of the mutated model against
    # one Redis (the unmutated Lua script).
    Target("python", ENGINE / "decisions.py", PY_SWAPS,
           ["tests/rules/test_table.py",
            "tests/rules/test_differential.py::test_every_store_follows_the_model[redis]",
            "-k", "model or follows"], "#"),
    Target("lua", SERVER / "store" / "redis_decisions.lua", LUA_SWAPS,
           [*RULES, "-k", "redis and not cluster and not sentinel"], "--"),
    *(
        Target("engine", ENGINE / name, PY_SWAPS,
               ["tests/engine/test_engine.py", "tests/engine/test_engine_answers.py",
                "tests/engine/test_engine_properties.py"], "#", lines=BUDGET)
        for name in ("engine.py", "answers.py", "flight.py")
    ),
]  # fmt: skip

# (file name, line number, mutated line stripped): why no input can tell the mutant apart.
EQUIVALENT: dict[tuple[str, int, str], str] = {}


@dataclass(frozen=True)
class Mutant:
    target: Target
    line: int  # 1-based
    before: str
    after: str


def mutants(target: Target) -> list[Mutant]:
    found: list[Mutant] = []
    in_docstring = False
    for number, line in enumerate(target.path.read_text().splitlines(), start=1):
        code = line.split(target.comment, 1)[0]
        if target.comment == "#" and code.count('"""') % 2:
            in_docstring = not in_docstring
            continue
        stripped = code.strip()
        if in_docstring or not stripped or stripped.startswith(("import", "from", "@", "def ")):
            continue
        if target.lines and not re.search(target.lines, code):
            continue
        if re.match(r"^\s*(local\s+)?function\b", code):
            continue
        for pattern, replacement in target.swaps:
            for match in re.finditer(pattern, code):
                if _in_string(code, match.start()):
                    continue
                mutated = code[: match.start()] + replacement + code[match.end() :]
                found.append(Mutant(target, number, line, mutated + line[len(code) :]))
    return found


def _in_string(code: str, index: int) -> bool:
    return code[:index].count("'") % 2 == 1 or code[:index].count('"') % 2 == 1


def run_tests(target: Target) -> int:
    # One failing example kills a mutant: no shrinking (tests/conftest.py's profile).
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutate"}
    run = subprocess.run(  # noqa: S603  # our own pytest, fixed arguments
        [*PYTEST, *target.tests], cwd=ROOT, capture_output=True, check=False, env=env
    )
    return run.returncode


def killed(mutant: Mutant) -> bool:
    """Whether a test failed on the mutant. Only a failing test counts (pytest's exit code 1):
    an error in collection or usage stops the run, so that it never passes for a kill."""
    original = mutant.target.path.read_text()
    lines = original.splitlines(keepends=True)
    lines[mutant.line - 1] = mutant.after + "\n"
    try:
        mutant.target.path.write_text("".join(lines))
        code = run_tests(mutant.target)
    finally:
        mutant.target.path.write_text(original)
    if code not in (0, 1):
        raise SystemExit(f"pytest exited {code} on {mutant.target.path.name}:{mutant.line}")
    return code == 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted({t.name for t in TARGETS}))
    parser.add_argument("--list", action="store_true", help="print the mutants, run nothing")
    args = parser.parse_args()
    started = time.monotonic()
    survivors: list[Mutant] = []
    equivalent = total = 0
    for target in TARGETS:
        if args.only and target.name != args.only:
            continue
        if not args.list and run_tests(target) != 0:
            # A kill means something only against tests that pass on the real code.
            print(f"the tests of {target.path.name} fail without a mutant: fix them first")
            return 2
        for mutant in mutants(target):
            where = f"{target.path.relative_to(ROOT)}:{mutant.line}: {mutant.after.strip()}"
            if args.list:
                print(where)
                continue
            total += 1
            reason = EQUIVALENT.get((target.path.name, mutant.line, mutant.after.strip()))
            if killed(mutant):
                print(f"killed    {where}", flush=True)
            elif reason:
                equivalent += 1
                print(f"equivalent {where}  ({reason})", flush=True)
            else:
                survivors.append(mutant)
                print(f"SURVIVED  {where}", flush=True)
    if not args.list:
        print(f"\n{total} mutants: {total - equivalent - len(survivors)} killed, "
              f"{equivalent} equivalent, {len(survivors)} survived "
              f"in {time.monotonic() - started:.0f} s")  # fmt: skip
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
