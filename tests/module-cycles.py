#!/usr/bin/python3
"""Fails when the modules of src/ call each other in a cycle, at link level.

Each object file of the static library is one module (api.c.o is "api").
Module A depends on B when A leaves undefined a symbol that B defines
(`nm -u` and `nm --defined-only`). Any cycle in that graph (A needs B and
B, directly or not, needs A) is printed with the symbols that make each of
its edges, and the test fails: two modules that call each other share too
much, and the fix is a callback or a narrow interface, as the cache's fetch
function is.

    tests/module-cycles.py [--nm NM] build/src/libtokend.a.p
"""
import argparse
import glob
import os
import subprocess
import sys


def symbols(nm, obj, *flags):
    out = subprocess.run([nm, *flags, obj], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def module_graph(nm, objdir):
    objs = sorted(glob.glob(os.path.join(objdir, "*.o")))
    if not objs:
        sys.exit(f"{objdir}: no object files; build the library first (ninja -C build)")
    defined, needs = {}, {}
    for obj in objs:
        mod = os.path.basename(obj).split(".")[0]
        for s in symbols(nm, obj, "--defined-only", "-g"):
            defined[s] = mod
        needs[mod] = symbols(nm, obj, "-u")
    graph = {m: {} for m in needs}
    for mod, undef in needs.items():
        for s in sorted(undef):
            other = defined.get(s)
            if other and other != mod:
                graph[mod].setdefault(other, []).append(s)
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nm", default="nm")
    ap.add_argument("objdir")
    args = ap.parse_args()
    graph = module_graph(args.nm, args.objdir)
    bad = cycles(graph)
    for comp in bad:
        print(f"modules in a cycle: {', '.join(comp)}")
        for a in comp:
            for b, syms in sorted(graph[a].items()):
                if b in comp:
                    print(f"  {a} -> {b}: {', '.join(syms[:5])}{' ...' if len(syms) > 5 else ''}")
    if bad:
        print("break each cycle with a callback or a narrow interface (see src/api-internal.h)")
        return 1
    print(f"{len(graph)} modules, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
