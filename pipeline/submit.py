"""`toklabel submit`: a run as a Ray Job on a running cluster (its dashboard address, http://HOST:8265).

The job carries the repository (pipeline/, workers/, data/; not .venv, runs or caches) as its working
directory and the resolved config as an environment variable; on the cluster it runs `python -m pipeline.submit`.
Ray clusters have token authentication on by default: the token is read from RAY_AUTH_TOKEN,
the file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token (`ray get-auth-token` prints it on the head node).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from pipeline.config import REPO, RunConfig

CONFIG_VAR = "TOKLABEL_RUN_CONFIG"
# Ray refuses a working_dir above 100 MiB; these never belong in a job.
EXCLUDES = [".git", ".venv", "runs", "bench/results", "**/__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache"]
WORKING_DIR_LIMIT = 100 * 2**20
# Variables that say where object storage is, never secrets: forwarded to the job when set here.
FORWARDED = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "HF_HUB_OFFLINE")
CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
AGENT_WAIT_S = 120  # how long to wait for a freshly started head's job agent


def auth_token() -> str | None:
    """The Ray auth token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def job_config(config: RunConfig) -> RunConfig:
    """The config as the job sees it: paths inside the repository made relative to it (the job's working dir)."""
    raw = config.to_dict()
    for key in ("sae", "corpus", "model", "discriminator", "out"):
        value = raw.get(key)
        if isinstance(value, str) and "://" not in value and Path(value).is_absolute():
            path = Path(value)
            if path.is_relative_to(REPO) and not path.is_relative_to(REPO / "runs"):
                raw[key] = str(path.relative_to(REPO))
            elif key != "out" and not path.exists():
                raise FileNotFoundError(f"config key {key!r}: {value} does not exist")
    return RunConfig.from_dict(raw, source="submitted config")


def _working_dir_size() -> int:
    skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache"}
    total = 0
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [
            d for d in dirs if d not in skip and not d.endswith(".egg-info") and Path(root, d) != REPO / "bench/results"
        ]
        total += sum(os.path.getsize(Path(root, f)) for f in files)
    return total


@contextmanager
def _explained(address: str):
    """Turn the job SDK's HTTP failures into errors that say what to do."""
    try:
        yield
    except Exception as err:  # the SDK raises bare RuntimeError / ConnectionError subclasses
        text = str(err)
        # The SDK raises AuthenticationError itself when auth is on and it finds no token anywhere.
        if "401" in text or "Authentication required" in text or "couldn't find an authentication token" in text:
            raise ValueError(
                f"the Ray cluster at {address} requires an auth token and none was found: set RAY_AUTH_TOKEN, "
                "or RAY_AUTH_TOKEN_PATH, or write it to ~/.ray/auth_token (`ray get-auth-token` on the head node)"
            ) from None
        if "403" in text or "Authentication failed" in text:
            raise ValueError(
                f"the Ray cluster at {address} refused the auth token (from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                "or ~/.ray/auth_token): it is not this cluster's token"
            ) from None
        if isinstance(err, ConnectionError) or "Failed to connect" in text:
            raise ValueError(f"cannot reach the Ray dashboard at {address}: {text.splitlines()[0]}") from None
        raise


def submit(config: RunConfig, address: str, forward_credentials: bool = False) -> tuple[object, str]:
    """Submit the run as a Ray Job; (client, job id)."""
    if not address.startswith(("http://", "https://")):
        raise ValueError(f"--address {address!r}: expected the dashboard URL, like http://HOST:8265")
    size = _working_dir_size()
    if size > WORKING_DIR_LIMIT:
        raise ValueError(
            f"the repository at {REPO} holds {size / 2**20:.0f} MiB outside .venv and runs; Ray takes at most "
            "100 MiB as a job's working_dir: move large corpora to object storage or out of the repository"
        )
    cfg = job_config(config)
    names = FORWARDED + (CREDENTIALS if forward_credentials else ())
    env = {k: os.environ[k] for k in names if os.environ.get(k)}
    env[CONFIG_VAR] = cfg.to_yaml()
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    with _explained(address):
        jobs = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"} if token else None)
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = jobs.submit_job(
                    entrypoint="python -m pipeline.submit",
                    runtime_env={"working_dir": str(REPO), "excludes": EXCLUDES, "env_vars": env},
                    metadata={"toklabel_out": cfg.out, "config_hash": cfg.hash()},
                )
                return jobs, job_id
            except RuntimeError as err:
                # A head that has just started answers this until its job agent is up.
                if "No available agent" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(2)


def follow(jobs, job_id: str) -> str:
    """Stream the job's logs to stdout until it ends; its final status."""

    async def tail():
        async for lines in jobs.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    return str(jobs.get_job_status(job_id).value)


def job_main() -> None:
    """The job's entrypoint on the cluster: run the config handed over in TOKLABEL_RUN_CONFIG."""
    from pipeline import driver
    from pipeline.summary import summary

    raw = os.environ.get(CONFIG_VAR)
    if not raw:
        sys.exit(f"{CONFIG_VAR} is not set: this module is the entrypoint of jobs made by `toklabel submit`")
    config = RunConfig.from_dict(yaml.safe_load(raw), source=CONFIG_VAR)
    print(summary(driver.run(config, address="auto")))


if __name__ == "__main__":
    job_main()
