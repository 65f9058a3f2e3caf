"""An import-linter contract type: no import circle at all among the modules of the given packages.

import-linter's `acyclic_siblings` looks at siblings of one package; a circle through a
package's `__init__` and its own modules, or across packages, is outside its view. This one
looks at every module at once (imports inside functions included, as grimp records them) and
names each circle it finds (Tarjan's strongly connected components).
"""

from __future__ import annotations

from typing import Any

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck


def circles(graph: ImportGraph, packages: set[str]) -> list[list[str]]:
    modules = sorted(m for m in graph.modules if m.split(".")[0] in packages)
    known = set(modules)
    edges = {m: sorted(x for x in graph.find_modules_directly_imported_by(m) if x in known) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in modules:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:  # iterative Tarjan: the graph may be deep
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


class NoCirclesContract(Contract):
    type_name = "no_circles"

    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        found = circles(graph, set(self.packages))  # type: ignore[arg-type]
        return ContractCheck(kept=not found, metadata={"circles": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        circles_found: list[Any] = check.metadata["circles"]
        for members in circles_found:
            output.print_error("These modules import one another in a circle: " + ", ".join(members))
            output.new_line()
