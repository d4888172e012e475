"""``foreman backup`` and ``foreman restore``: a copy of the log and its artifacts that
outlives the machine, taken while Foreman runs (ADR-0045, docs/backups.md)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from foreman import backups
from foreman.cli.events import db_option, json_option
from foreman.cli.render import progress_bar

artifacts_option = click.option(
    "--artifacts-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="FOREMAN_ARTIFACTS_DIR",
    show_envvar=True,
    help="The artifacts directory (default: beside the log, NAME.artifacts).",
)


def _artifacts(db: Path, artifacts_dir: Path | None) -> Path:
    """Where Foreman keeps the artifacts of the log at ``db`` (``Settings.artifact_root``)."""
    return artifacts_dir or db.with_suffix(".artifacts")


def _verified(db: Path) -> None:
    found = backups.problems(db)
    if found:
        listed = "\n".join(f"  {p.seq if p.seq is not None else '-'}: {p.message}" for p in found)
        raise click.ClickException(f"{db} is NOT sound:\n{listed}")


@click.command()
@click.argument("dest", type=click.Path(path_type=Path))
@db_option
@artifacts_option
@json_option
def backup(dest: Path, db: Path, artifacts_dir: Path | None, as_json: bool) -> None:
    """Copy the log and its artifacts to the new directory DEST, while Foreman runs."""
    try:
        with progress_bar("copying the log") as progress:
            manifest = backups.take(db, _artifacts(db, artifacts_dir), dest, progress)
    except backups.BackupError as error:
        raise click.ClickException(str(error)) from None
    _verified(dest / backups.DB_NAME)
    if as_json:
        click.echo(json.dumps(asdict(manifest)))
        return
    click.echo(
        f"backed up to {dest}: events 1..{manifest.head_seq} (head hash "
        f"{manifest.head_hash[:16]}…), {manifest.artifact_files} artifact files; verified"
    )


@click.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@db_option
@artifacts_option
@click.option("--force", is_flag=True, help="Replace an existing log and artifacts.")
@json_option
def restore(source: Path, db: Path, artifacts_dir: Path | None, force: bool, as_json: bool) -> None:
    """Bring back the backup in SOURCE as the log at --db; never over a running Foreman's."""
    try:
        manifest = backups.restore(source, db, _artifacts(db, artifacts_dir), force=force)
    except backups.BackupError as error:
        raise click.ClickException(str(error)) from None
    _verified(db)
    if as_json:
        click.echo(json.dumps(asdict(manifest)))
        return
    click.echo(
        f"restored {db} from {source}: events 1..{manifest.head_seq} as of "
        f"{manifest.created_at}, {manifest.artifact_files} artifact files; verified"
    )
