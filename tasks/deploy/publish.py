"""Publishing a run to the artifact store, the ``latest`` pointer, and rollback. Store-agnostic.

Layout: ``runs/<run_id>/<file>`` (immutable) with ``runs/<run_id>/manifest.json`` (sha256 and size of
every file, the recipe, lineage, metrics, the gate decision); ``latest/<recipe>.json`` names the
current run and the one before it. The pointer is written last, with a compare-and-swap, and only
after every file it will name has been verified in the store.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from tasks.core.refs import ArtifactRef
from tasks.core.store import ArtifactStore, StoreError


def latest_key(recipe: str) -> str:
    return f"latest/{recipe}.json"


def read_latest(store: ArtifactStore, recipe: str) -> dict[str, Any] | None:
    data = store.read_key(latest_key(recipe))
    return json.loads(data) if data else None


def read_manifest(store: ArtifactStore, run_id: str) -> dict[str, Any] | None:
    data = store.read_key(f"runs/{run_id}/manifest.json")
    return json.loads(data) if data else None


def publish_run(store: ArtifactStore, run_id: str, recipe: dict[str, Any], artifacts: dict[str, ArtifactRef],
                lineage: dict[str, Any], metrics: dict[str, Any], gate: dict[str, Any],
                output_schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Copy every artifact under ``runs/<run_id>/`` (verified) and write the manifest. Returns it.

    ``output_schema`` (JSON recipes): the schema a client passes as the structured output format, the
    one validation decoded with.
    """
    files = {}
    for name, ref in sorted(artifacts.items()):
        key = f"runs/{run_id}/{name}/{ref.name}"
        uri = store.copy_ref_to(ref, key)
        files[name] = {"key": key, "uri": uri, "sha256": ref.sha256, "bytes": ref.bytes, "is_dir": ref.is_dir,
                       "kind": ref.kind, "source": ref.model_dump(mode="json")}
    manifest = {"run_id": run_id, "recipe": recipe, "files": files, "lineage": lineage, "metrics": metrics,
                "gate": gate, "published_at": datetime.now(UTC).isoformat()}
    if output_schema is not None:
        manifest["output_schema"] = output_schema
    store.write_key(f"runs/{run_id}/manifest.json",
                    json.dumps(manifest, indent=2, sort_keys=True, default=str).encode())
    return manifest


def move_latest(store: ArtifactStore, recipe: str, run_id: str) -> dict[str, Any]:
    """Point ``latest`` at a published run (compare-and-swap). Raises PointerConflict if another won."""
    manifest = read_manifest(store, run_id)
    if manifest is None:
        raise StoreError(f"run {run_id} has no manifest; publish it before pointing latest at it")
    for name, entry in manifest["files"].items():
        if not store.verify(ArtifactRef.model_validate(entry["source"]).model_copy(update={"uri": entry["uri"]})):
            raise StoreError(f"run {run_id}: {name} is missing or altered in the store; latest not moved")
    current_bytes = store.read_key(latest_key(recipe))
    current = json.loads(current_bytes) if current_bytes else None
    if current and current.get("run_id") == run_id:
        return current
    history = ([current["run_id"]] + current.get("history", [])) if current else []
    pointer = {"run_id": run_id, "manifest": f"runs/{run_id}/manifest.json", "previous": history[0] if history else None,
               "history": history[:20], "moved_at": datetime.now(UTC).isoformat()}
    store.write_pointer(latest_key(recipe), json.dumps(pointer, indent=2).encode(), current_bytes)
    return pointer


def rollback_latest(store: ArtifactStore, recipe: str) -> dict[str, Any]:
    """Point ``latest`` back at the run before the current one."""
    current_bytes = store.read_key(latest_key(recipe))
    if not current_bytes:
        raise StoreError(f"recipe {recipe} has no latest run to roll back")
    current = json.loads(current_bytes)
    history = current.get("history", [])
    if not history:
        raise StoreError(f"recipe {recipe}: run {current['run_id']} has no previous run to roll back to")
    target = history[0]
    if read_manifest(store, target) is None:
        raise StoreError(f"previous run {target} has no manifest in the store")
    pointer = {"run_id": target, "manifest": f"runs/{target}/manifest.json",
               "previous": history[1] if len(history) > 1 else None, "history": history[1:],
               "rolled_back_from": current["run_id"], "moved_at": datetime.now(UTC).isoformat()}
    store.write_pointer(latest_key(recipe), json.dumps(pointer, indent=2).encode(), current_bytes)
    return pointer


def production_gguf(store: ArtifactStore, recipe: str, serve: str) -> ArtifactRef | None:
    """The GGUF the ``latest`` pointer names (today's production model), or None.

    The content-addressed ref the package stage made is preferred over the published copy (same
    bytes): it is the ref the run that deployed the model evaluated, so scoring production again
    with the same held-out set is a cache hit, not a second evaluation.
    """
    latest = read_latest(store, recipe)
    manifest = read_manifest(store, latest["run_id"]) if latest else None
    entry = manifest["files"].get(f"gguf_{serve}") if manifest else None
    if entry is None:
        return None
    source = ArtifactRef.model_validate(entry["source"])
    if store.verify(source):
        return source
    published = source.model_copy(update={"uri": entry["uri"]})
    return published if store.verify(published) else None
