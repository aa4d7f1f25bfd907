"""Runs inside the sandbox, as the program's own process: limits first, then the program, and for
a functional test the call of its function, whose JSON result is printed as the last line.

Why a file of its own: it is copied into the sandbox beside the program and started by a bare
interpreter (`python -I`), so it imports nothing but the standard library. The limits are set
here, before the program runs, because limits set in the process that becomes the program bind
everything it starts; the boundary (bubblewrap or Docker) runs it as an unprivileged user, so
they cannot be raised again. Only the case's input comes in: the expected output stays outside
and is compared there, so nothing a program finds in here can tell it the answer.

    python -I -B harness.py PROGRAM MEMORY_BYTES CPU_S OUTPUT_BYTES PROCESSES [FUNCTION]
"""

import inspect
import json
import resource
import runpy
import sys
import types

PRELUDE = "from typing import *\nimport collections, heapq, itertools, math, bisect, functools\n"  # as LeetCode has


def limit(memory: int, cpu_s: int, output: int, processes: int) -> None:
    """Address space, CPU seconds (SIGXCPU, then SIGKILL a second later), file size, and processes
    unless `processes` is 0 (a container counts them with its PID limit instead)."""
    limits = [(resource.RLIMIT_CORE, 0, 0), (resource.RLIMIT_AS, memory, memory),
              (resource.RLIMIT_CPU, cpu_s, cpu_s + 1), (resource.RLIMIT_FSIZE, output, output)]
    for res, soft, hard in limits + ([(resource.RLIMIT_NPROC, processes, processes)] if processes else []):
        resource.setrlimit(res, (soft, hard))


def function(namespace: dict, name: str):
    """`Solution().<name>` or a top-level `<name>`, found where it is defined: a `__getattr__` or
    `__getattribute__` on the class answers no lookup here."""
    cls = namespace.get("Solution")
    if isinstance(cls, type):
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, types.FunctionType):
            return types.MethodType(attr, cls())
        if isinstance(attr, staticmethod) and isinstance(attr.__func__, types.FunctionType):
            return attr.__func__
    attr = namespace.get(name)
    if isinstance(attr, types.FunctionType):
        return attr
    raise LookupError(f"the program defines no function {name} (as Solution().{name} or top-level)")


def call(path: str, name: str) -> None:
    """Run the program as a module, call its function on the input's JSON lines, print the result."""
    args = [json.loads(line) for line in sys.stdin.read().splitlines() if line.strip()]
    with open(path, encoding="utf-8") as f:
        code = compile(PRELUDE + f.read(), path, "exec")
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(code, namespace)
    result = json.dumps(function(namespace, name)(*args), allow_nan=False)
    sys.stdout.write("\n" + result + "\n")


def main(argv: list[str]) -> None:
    path, memory, cpu_s, output, processes = argv[1], *(int(x) for x in argv[2:6])
    name = argv[6] if len(argv) > 6 else ""
    limit(memory, cpu_s, output, processes)
    sys.argv = [path]
    if name:
        call(path, name)
    else:
        runpy.run_path(path, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv)
