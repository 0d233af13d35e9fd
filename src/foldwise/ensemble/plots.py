"""`python -m foldwise.ensemble.plots`: make `dvc plots show` render with no network.

DVC's page loads vega, vega-lite and vega-embed from a CDN, so offline only the images render.
The project's `.dvc/config` points `plots.html_template` at `.dvc/plots/offline.html`, which
loads one local file instead: `.foldwise/vega/vega-embed.js`, the three libraries bundled by
the Vega project's own `vl-convert` (pinned in pyproject.toml). This command writes that file
(`make here`, and so `make repro` and `make test`, run it when it is missing). The page is then
`dvc_plots/index.html`, DVC's default output folder: the template's path to the bundle is
relative to it.
"""
from __future__ import annotations

from pathlib import Path

from foldwise.files import atomic_path, project_root

BUNDLE = Path(".foldwise") / "vega" / "vega-embed.js"


def write_bundle(root: str | Path | None = None) -> Path:
    """Write the bundle (vega-embed, vega-lite, vega: `window.vegaEmbed`) under `root`."""
    import vl_convert

    path = Path(root or project_root()) / BUNDLE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(vl_convert.javascript_bundle(), encoding="utf8")  # type: ignore[call-arg]
        Path(tmp).chmod(0o644)  # a page any browser of this machine reads
    return path


def main() -> None:
    from foldwise import stage
    stage.parser(__doc__, prog="python -m foldwise.ensemble.plots").parse_args()
    stage.run(lambda: print(f"{write_bundle()}: vega {vl_convert_versions()}, for "
                            "`dvc plots show` offline"))


def vl_convert_versions() -> str:
    import vl_convert
    return f"{vl_convert.get_vega_version()}, vega-embed {vl_convert.get_vega_embed_version()}"


if __name__ == "__main__":
    main()
