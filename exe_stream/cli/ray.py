"""``scan --ray``: the scan command's Ray options and the RayOptions they make
(the scan itself is ``exe_stream.ray_scan.scan_ray``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

RayAddress = Annotated[Optional[str], typer.Option(
    "--ray", metavar="auto|local|ADDRESS",
    help="Scan on a Ray cluster: auto (join the running cluster, else start one here), local, "
         "host:port of a head node, or ray://host:port (Ray Client).")]
RayCpusPerFilm = Annotated[float, typer.Option(
    "--ray-cpus-per-film", help="With --ray: CPUs one film takes on a node without GPUs.")]
RayFilmsPerGpu = Annotated[int, typer.Option(
    "--ray-films-per-gpu", help="With --ray: films at once per GPU (0 = --films-at-once, else one per NVDEC engine).")]
RayMaxAttempts = Annotated[int, typer.Option(
    "--ray-max-attempts", help="With --ray: attempts a film gets when its worker is lost (killed, node gone, out of memory).")]


def ray_options(address: str, cpus_per_film: float, films_per_gpu: int, max_attempts: int):
    """The RayOptions of ``scan --ray`` (their checks name the option the user typed)."""
    from ..ray_scan import RayOptions

    for flag, value, ok, rule in (("--ray-cpus-per-film", cpus_per_film, cpus_per_film > 0, "> 0"),
                                  ("--ray-films-per-gpu", films_per_gpu, films_per_gpu >= 0, ">= 0"),
                                  ("--ray-max-attempts", max_attempts, max_attempts >= 1, ">= 1")):
        if not ok:
            raise ValueError(f"{flag} must be {rule}, got {value}")
    return RayOptions(address=address, cpus_per_film=cpus_per_film, films_per_gpu=films_per_gpu,
                      max_attempts=max_attempts)
