"""What the demo does through the producer API: one chain and a batch.

The chain is a text-to-image followed by three edits, each taking the step
before's picture; the batch is 20 independent text-to-image jobs, enqueued at
once while the chain runs, so the worker has both to interleave.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from PIL import Image

from ops.demo.contact_sheet import Step, make_contact_sheet
from ops.demo.progress import ProgressBar
from producer import ChainState, ChainStatus, JobClient, TextToImage

Say = Callable[[str], None]

CHAIN_START = TextToImage(
    "a white lighthouse on a rocky coast at dusk, calm sea", seed=7, aspect_ratio="1:1"
)
CHAIN_EDITS = (
    "cover the rocks and the lighthouse in fresh snow",
    "add a small red sailboat on the water",
    "make the sky a starry night with a full moon",
)
_SUBJECTS = ("fox", "teapot", "cactus", "robot", "owl", "bicycle", "castle", "koi fish")
_STYLES = ("watercolor", "pixel art", "linocut", "neon", "pastel")
DOWNLOAD_TIMEOUT = 60.0


class ShowcaseError(Exception):
    """The showcase did not finish as it should."""


@dataclass(frozen=True)
class Showcase:
    chain: ChainStatus
    chain_images: list[Path]
    contact_sheet: Path
    batch_completed: int
    batch_failed: int


def batch_prompts(count: int) -> list[str]:
    return [
        f"a {_STYLES[i % len(_STYLES)]} {_SUBJECTS[i % len(_SUBJECTS)]}, study {i + 1}"
        for i in range(count)
    ]


def run_showcase(
    client: JobClient, out_dir: Path, *, batch_size: int, timeout: float, say: Say
) -> Showcase:
    chain_id = client.chain(CHAIN_START, list(CHAIN_EDITS), metadata={"demo": "chain"})
    say(f"chain {chain_id}: text-to-image + {len(CHAIN_EDITS)} edits enqueued")
    job_ids = [
        client.text_to_image(prompt, seed=i, metadata={"demo": "batch"})
        for i, prompt in enumerate(batch_prompts(batch_size))
    ]
    say(f"batch: {len(job_ids)} text-to-image jobs enqueued")
    bar = ProgressBar(len(job_ids), "batch")
    records = client.wait_all(job_ids, timeout, on_progress=bar.update)
    bar.finish()
    completed = sum(record.status.value == "completed" for record in records)

    chain = client.wait_chain(chain_id, timeout)
    if chain.state is not ChainState.COMPLETED:
        failed = chain.failed_step
        reason = f"{failed.error.code}: {failed.error.message}" if failed and failed.error else ""
        raise ShowcaseError(
            f"chain {chain_id} {chain.state.value} at step {chain.current_step} {reason}"
        )
    say(f"chain {chain_id}: all {len(chain.steps)} steps completed")
    images, paths = _save_chain(client, chain, out_dir)
    sheet_path = out_dir / "contact_sheet.png"
    make_contact_sheet(images, "wavequeue demo: one chain, each step edits the one before").save(
        sheet_path
    )
    return Showcase(chain, paths, sheet_path, completed, len(records) - completed)


def _save_chain(
    client: JobClient, chain: ChainStatus, out_dir: Path
) -> tuple[list[Step], list[Path]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    records = client.get_many(step.job_id for step in chain.steps)
    steps, paths = [], []
    with requests.Session() as session:
        for step, record in zip(chain.steps, records, strict=True):
            image = _download(session, step.outputs[0])
            path = out_dir / f"chain_step{step.number}.png"
            image.save(path)
            kind = "text-to-image" if step.number == 1 else "edit"
            prompt = str(record.input.get("prompt", ""))
            steps.append(Step(image, f"{step.number}. {kind}", record.model, prompt))
            paths.append(path)
    return steps, paths


def _download(session: requests.Session, url: str) -> Image.Image:
    try:
        response = session.get(url, timeout=DOWNLOAD_TIMEOUT)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise ShowcaseError(f"cannot download {url}: {type(exc).__name__}") from None
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image
