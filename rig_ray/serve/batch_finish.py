"""The end of a batch: its output and error files, made from its job folder by
`rig_ray.batch.export_openai` and recorded in the file store, and its final status."""

from __future__ import annotations

import typing as t

from rig_ray.batch.openai_export import export_openai
from rig_ray.batch.openai_files import is_prepared
from rig_ray.serve.batches import BatchObject, BatchStore, Status


def finish(store: BatchStore, batch: BatchObject, status: str | None) -> BatchObject:
    """The batch in its final status (`status`, or `completed` when None) with the files of
    the lines that finished; a file with no line is not made."""
    files = store.files
    output_id, errors_id = files.new_id(), files.new_id()
    for file_id in (output_id, errors_id):
        files.filesystem.create_dir(files.folder(file_id), recursive=True)
    job = store.job_location(batch.id)
    if is_prepared(job):
        summary = export_openai(
            job, files.content_location(output_id), files.content_location(errors_id)
        )
        lines = summary.output_lines, summary.error_lines
    else:  # stopped before its lines were read
        lines = (0, 0)
    kept: list[str | None] = []
    for file_id, count, kind in zip(
        (output_id, errors_id), lines, ("output", "errors"), strict=True
    ):
        if count:
            size = files.filesystem.get_file_info(f"{files.folder(file_id)}/content.jsonl")
            files.record(file_id, f"{batch.id}_{kind}.jsonl", "batch_output", size.size)
            kept.append(file_id)
        else:
            files.filesystem.delete_dir(files.folder(file_id))
            kept.append(None)
    counts = batch.request_counts.model_copy(update={"completed": lines[0], "failed": lines[1]})
    final = t.cast(Status, status or "completed")
    fields: dict[str, t.Any] = {
        "output_file_id": kept[0],
        "error_file_id": kept[1],
        "request_counts": counts,
    }
    if final == "expired" and batch.expired_at is not None:
        fields["expired_at"] = batch.expired_at
    return batch.moved(final, **fields)
