"""Mutation testing of the rules: flip each comparison, shift each boundary, swap and/or and
max/min in the rule code, run the rule tests against each mutant, and print what survived.

    .venv/bin/python scripts/mutate.py [--only lua|python|engine] [--at FILE:LINE]... [--list]

Targets: the Python rules (engine/decisions.py, against the table's rows on the pure model and
the differential test of the model against the Lua script on one Redis), the Lua script (against
the single-Redis rows and the differential test) and the engine's budget lines (engine.py,
answers.py, flight.py, against the engine tests and the stateful test on the memory store). One
mutant at a time is written over the file and the file is restored afterwards, whatever happens;
the tests must pass without a mutant first, and only a failing test (not an error) kills one. A
survivor is either a missing test or an equivalent mutant; EQUIVALENT below lists the known
equivalents, each with the reason, so the count of survivors that need a test stays at zero.
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
    # same functions on the same inputs), the differential test of the mutated model against one
    # Redis (the unmutated Lua script), and a store test that takes ReserveRequest's defaults.
    Target("python", ENGINE / "decisions.py", PY_SWAPS,
           ["tests/rules/test_table.py",
            "tests/rules/test_differential.py::test_every_store_follows_the_model[redis]",
            "tests/store/test_memory_store.py::test_a_running_attempt_is_found_by_clear",
            "-k", "model or follows or found_by_clear"], "#"),
    Target("lua", SERVER / "store" / "redis_decisions.lua", LUA_SWAPS,
           [*RULES, "-k", "redis and not cluster and not sentinel"], "--"),
    *(
        Target("engine", ENGINE / name, PY_SWAPS,
               ["tests/engine/test_engine.py", "tests/engine/test_engine_answers.py",
                "tests/engine/test_engine_properties.py::test_engine_properties[memory]"],
               "#", lines=BUDGET)
        for name in ("engine.py", "answers.py", "flight.py")
    ),
]  # fmt: skip

# (file name, line number, mutated line stripped): why no input can tell the mutant apart.
SAME_TTL = "PEXPIRE to the TTL the key already has changes nothing"
RESAVE = "saves the record unchanged, same expiry; at most a watcher wakes to find nothing new"
RUNNING = (
    "a held lease's entry exists and is running: only a completion with its token changes it, "
    "and that completion ends the lease; a release removes both; a tombstone keeps it"
)
EQUIVALENT: dict[tuple[str, int, str], str] = {
    ("redis_decisions.lua", 34, "if redis.call('PTTL', index) <= ttl then"): SAME_TTL,
    ("redis_decisions.lua", 149,
     "if redis.call('PTTL', KEYS[2]) <= math.ceil((record.exp - now) * 1000) then"): SAME_TTL,
    # count_known_attempts / reap_expired_lease answering "changed" when nothing changed, and
    # reserve starting with changed = true: the verdict saves the record as it was.
    ("redis_decisions.lua", 42, "return true"): RESAVE,
    ("redis_decisions.lua", 51, "return true"): RESAVE,
    ("redis_decisions.lua", 79, "local changed = true"): RESAVE,
    ("redis_decisions.lua", 55, "if entry ~= nil or entry[3] == 'running' then"): RUNNING,
    ("redis_decisions.lua", 265, "if record.lease ~= nil and record.lease[3] >= now then"):
        "a lease ending at `now` gives lease_end = now either way",
    # The same in the Python rules (the stores persist the record when `changed` is set).
    ("decisions.py", 112, "return True"): RESAVE,
    ("decisions.py", 124, "return True"): RESAVE,
    ("decisions.py", 149, "changed = True"): RESAVE,
    ("decisions.py", 169, "return Reserved(lease, record), True"): RESAVE,
    ("decisions.py", 127,
     "if entry is not None or entry.result is AttemptResult.RUNNING:"): RUNNING,
    ("decisions.py", 155, "return Mismatch(), True"):
        "every store ignores the flag for a Mismatch: there is no record of this payload to save",
    ("decisions.py", 215, "return True"):
        "complete(None) changes nothing either way: every store saves only a record it read",
    ("decisions.py", 244, "return True"): RESAVE,
    ("decisions.py", 257, "return True"):
        "release() is called only when `ours`, which needs a lease: this branch never runs",
    ("decisions.py", 194, "record.fence += 2"):
        "tokens stay unique and above the floor; nothing compares them but for equality and max",
}  # fmt: skip


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
    parser.add_argument(
        "--at", action="append", default=[], metavar="FILE:LINE",
        help="only the mutants of this line (e.g. decisions.py:120); repeatable",
    )  # fmt: skip
    args = parser.parse_args()
    started = time.monotonic()
    survivors: list[Mutant] = []
    equivalent = total = 0
    for target in TARGETS:
        if args.only and target.name != args.only:
            continue
        if args.at and not any(at.startswith(f"{target.path.name}:") for at in args.at):
            continue
        if not args.list and run_tests(target) != 0:
            # A kill means something only against tests that pass on the real code.
            print(f"the tests of {target.path.name} fail without a mutant: fix them first")
            return 2
        for mutant in mutants(target):
            if args.at and f"{target.path.name}:{mutant.line}" not in args.at:
                continue
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
