"""No import circle anywhere in gischat: every module, imports under `TYPE_CHECKING` included.

The layers contract (`lint-imports`) keeps the parts in one direction, but it neither looks inside a
part nor at type-only imports; a circle there still makes a reader hold both ends in mind to change
either, and breaks the day one side's import runs at import time. grimp (import-linter's own graph)
builds the graph; a circle is a strongly connected set of more than one module. The detector proves
itself on a graph with a known circle first, so this check cannot pass by finding nothing.

    python .ci/import_circles.py        # exit 1 and the circles, one a line, when there are any
"""

from __future__ import annotations

import sys

import grimp


def circles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The module sets that import each other round (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def detector_works() -> bool:
    graph = grimp.ImportGraph()
    for module in ("a", "a.one", "a.two", "a.three"):
        graph.add_module(module)
    graph.add_import(importer="a.one", imported="a.two")
    graph.add_import(importer="a.two", imported="a.one")
    graph.add_import(importer="a.three", imported="a.one")
    return circles(graph) == [["a.one", "a.two"]]


def main() -> int:
    if not detector_works():
        print("import circles: the detector missed a known circle", file=sys.stderr)
        return 2
    graph = grimp.build_graph("gischat", include_external_packages=False, exclude_type_checking_imports=False)
    found = circles(graph)
    for circle in found:
        print("import circle: " + " <-> ".join(circle), file=sys.stderr)
    if not found:
        print(f"import circles: none among {len(graph.modules)} modules (type-only imports included)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
