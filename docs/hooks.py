"""MkDocs hook: the guide page is the repository's README.md, and its figures come along, so the site
and the README never drift apart."""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]


def on_files(files, config):
    files.append(File.generated(config, "index.md", abs_src_path=str(ROOT / "README.md")))
    for image in sorted((ROOT / "figures").rglob("*.png")):
        files.append(File.generated(config, str(image.relative_to(ROOT)), abs_src_path=str(image)))
    return files
