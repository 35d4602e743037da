"""Roll a recipe back to the model before the current one: ``python -m flows.rollback --recipe NAME``.

Moves the store's ``latest`` pointer back one run (compare-and-swap) and, when an Ollama host is
configured, points ``<model>:latest`` at that run's tag.
"""

from __future__ import annotations

import argparse
import json
import sys

from tasks.core.recipe import DEFAULT_RECIPE, load_recipe
from tasks.core.settings import get_settings
from tasks.core.store import get_store
from tasks.deploy.publish import rollback_latest


def rollback(recipe: str) -> dict:
    r = load_recipe(recipe)
    pointer = rollback_latest(get_store(), r.name)
    result = {"recipe": r.name, "latest": pointer["run_id"], "rolled_back_from": pointer["rolled_back_from"]}
    host = get_settings().ollama_host
    if host:
        from tasks.deploy.ollama import rollback_ollama

        done = rollback_ollama(host, r.deploy.model_name, to_tag=pointer["run_id"])
        result["ollama"] = done.model_dump(mode="json")
    else:
        result["ollama"] = "skipped: no Ollama host configured (DISTILLERY_OLLAMA_HOST)"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.rollback", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE)
    args = parser.parse_args(argv)
    print(json.dumps(rollback(args.recipe), default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
