"""create_tfrecords.sh: gets the text (copy or download), builds, and skips a finished build."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from par_xl.data import SPLITS, read_metadata

REPO = Path(__file__).resolve().parents[1]
SMALL = {"VOCAB_SIZE": "400", "BATCH_SIZE": "4", "SEQ_LEN": "8", "SHARDS": "2", "NUM_THREADS": "1"}


def run_script(data_dir: Path, **env: str) -> subprocess.CompletedProcess:
    """Runs the script with small sizes; WIKITEXT2_DIR only when given."""
    inherited = {k: v for k, v in os.environ.items() if k != "WIKITEXT2_DIR"}
    env = {
        **inherited,
        "PYTHON": sys.executable,
        "DATA_DIR": str(data_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **SMALL,
        **env,
    }
    return subprocess.run(
        ["bash", str(REPO / "create_tfrecords.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_copies_builds_and_then_skips(small_text_dir, tmp_path):
    data = tmp_path / "data"
    first = run_script(data, WIKITEXT2_DIR=str(small_text_dir))
    assert first.returncode == 0, first.stderr
    for split in SPLITS:
        text = (data / "wikitext-2" / f"{split}.txt").read_bytes()
        assert text == (small_text_dir / f"{split}.txt").read_bytes()
        metadata = read_metadata(data / "tfrecords" / split)
        assert (metadata.vocab_size, metadata.batch_size, metadata.seq_len) == (400, 4, 8)
    assert read_metadata(data / "tfrecords" / "train").sp_model == str(data / "sp12k.model")
    metadata_file = data / "tfrecords" / "train" / "metadata.json"
    built = metadata_file.stat().st_mtime_ns

    second = run_script(data, WIKITEXT2_DIR=str(small_text_dir))
    assert second.returncode == 0, second.stderr
    assert "already built" in second.stdout
    assert metadata_file.stat().st_mtime_ns == built

    rebuilt = run_script(data, REBUILD="1", SEQ_LEN="16")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "Using WikiText-2" in rebuilt.stdout
    assert read_metadata(data / "tfrecords" / "train").seq_len == 16

    # Data of an older format (an earlier par-xl) is built again, not skipped.
    metadata_file.write_text(
        metadata_file.read_text().replace('"format_version": 2', '"format_version": 1')
    )
    upgraded = run_script(data)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "older format" in upgraded.stdout and "already built" not in upgraded.stdout
    assert read_metadata(data / "tfrecords" / "train").format_version == 2


def test_downloads_with_fallback_url(small_text_dir, tmp_path):
    archive = tmp_path / "wikitext-2-v1.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for split in SPLITS:
            z.write(small_text_dir / f"{split}.txt", f"wikitext-2/wiki.{split}.tokens")
    data = tmp_path / "data"
    urls = f"file://{tmp_path}/missing.zip file://{archive}"
    result = run_script(data, WIKITEXT2_URLS=urls)
    assert result.returncode == 0, result.stderr
    assert "missing.zip failed" in result.stderr
    for split in SPLITS:
        text = (data / "wikitext-2" / f"{split}.txt").read_bytes()
        assert text == (small_text_dir / f"{split}.txt").read_bytes()
        read_metadata(data / "tfrecords" / split)
    assert sorted(os.listdir(data)) == ["sp12k.model", "sp12k.vocab", "tfrecords", "wikitext-2"]


def test_missing_copy_source_is_an_error(tmp_path):
    result = run_script(tmp_path / "data", WIKITEXT2_DIR=str(tmp_path))
    assert result.returncode == 1
    assert f"WIKITEXT2_DIR={tmp_path} holds no train.txt" in result.stderr


def test_no_network_and_no_data_says_where_to_put_wikitext2(tmp_path):
    urls = f"file://{tmp_path}/nowhere.zip http://127.0.0.1:9/wikitext-2-v1.zip"
    result = run_script(tmp_path / "data", WIKITEXT2_URLS=urls)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"in {tmp_path}/data/wikitext-2, or set WIKITEXT2_DIR" in result.stderr
    assert not (tmp_path / "data" / "tfrecords").exists()


def test_the_metadata_check_does_not_import_tensorflow():
    """The script's check of finished splits imports only what reading metadata needs (the
    package's names load on first use): a skipped build takes a fraction of a second."""
    code = (
        "import sys\n"
        "from par_xl.data import DataError, read_metadata\n"
        "heavy = {'tensorflow', 'sentencepiece', 'keras'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from par_xl.data import load_dataset\n"
        "assert 'tensorflow' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
