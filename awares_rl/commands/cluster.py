"""``awares-rl submit`` and ``awares-rl job {status,logs,stop,wait}``: a recipe as a Ray Job that
ships the checkout (``cluster/submit.py``), its driver placed by what it runs
(``cluster.resources.recipe_resources``)."""

from __future__ import annotations

import os

from awares_rl.config import load_recipe
from cluster import submit as jobs
from cluster.resources import recipe_resources

DEFAULT_ADDRESS = "http://127.0.0.1:8265"


def _submit(args) -> int:
    # loaded here first: a bad recipe or override is refused before anything is uploaded
    driver = recipe_resources(load_recipe(args.recipe, args.overrides)).driver
    job_id = jobs.submit(args.address, args.recipe, args.overrides, args.command, working_dir=args.working_dir,
                         pip=args.pip, entrypoint_cpus=driver.cpus, entrypoint_gpus=driver.gpus or None)
    print(job_id, flush=True)
    if not args.wait:
        return 0
    final = jobs.wait(args.address, job_id, args.timeout)
    print(jobs.logs(args.address, job_id))
    print(final)
    return 0 if final == "SUCCEEDED" else 1


def _job(args) -> int:
    if args.action == "status":
        print(jobs.status(args.address, args.job_id))
    elif args.action == "logs":
        print(jobs.logs(args.address, args.job_id))
    elif args.action == "wait":
        print(jobs.wait(args.address, args.job_id, args.timeout))
    else:
        print(jobs.stop(args.address, args.job_id, args.timeout))
    return 0


def add_cluster_parsers(sub) -> None:
    address = {"default": os.environ.get("RAY_ADDRESS", DEFAULT_ADDRESS), "help": "the cluster's dashboard URL"}
    p = sub.add_parser("submit", help="run a recipe on a Ray cluster as a Ray Job that ships this checkout")
    p.add_argument("--address", **address)
    p.add_argument("--recipe", required=True, help="recipe YAML inside --working-dir")
    p.add_argument("--command", default="run", help="awares-rl sub-command the job runs")
    p.add_argument("--working-dir", default=".", help="the checkout to ship (default: the current directory)")
    p.add_argument("--pip", default=None, help="pinned requirements file to install on nodes that lack them")
    p.add_argument("--wait", action="store_true", help="wait for the job, print its logs and final status")
    p.add_argument("--timeout", type=float, default=24 * 3600, help="seconds --wait waits")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=_submit)
    j = sub.add_parser("job", help="status / logs / wait / stop of a submitted job")
    j.add_argument("action", choices=("status", "logs", "wait", "stop"))
    j.add_argument("job_id")
    j.add_argument("--address", **address)
    j.add_argument("--timeout", type=float, default=120, help="seconds wait/stop wait for the job to end")
    j.set_defaults(func=_job)
