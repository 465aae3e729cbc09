"""A method defined outside vqfast, registered with one call (or an entry point), is
trained, scored and reported by the command line like the built-in ones; the registry
is what the CLI, run folders and checkpoints read."""

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch

from vqfast import checkpoint, methods
from vqfast.cli import main
from vqfast.methods import Method, Scorer, Settings, priors, registry, setting
from vqfast.app.score import load_scorer
from vqfast.scorers import PAPER_PERCENTILES, ScoreBatch
from conftest import image_folders


@dataclass
class MeanConfig:
    channels: int = 3
    size: int = 32


class MeanImage(torch.nn.Module):
    """The toy model: the mean training image; an image's map is its absolute difference."""

    def __init__(self, config: MeanConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.channels, config.size, config.size))

    def config_dict(self):
        return {"model": "MeanImage", **dataclasses.asdict(self.config)}


@dataclass
class ToySettings(Settings):
    size: int = setting(32, "image side in pixels")
    gain: float = setting(1.0, "scale of the map")


def train_toy(settings: ToySettings, job) -> dict:
    model = MeanImage(MeanConfig(settings.channels, settings.size))
    images = torch.stack([job.train_set[i]["image"] for i in range(len(job.train_set))])
    model.mean.copy_(images.mean(0))
    checkpoint.save_model(model, job.out / "toy.safetensors")
    return {"images": len(images)}


class ToyScorer:
    def __init__(self, model, gain):
        self.model, self.gain = model, gain

    def score(self, images):
        maps = self.gain * (images - self.model.mean).abs().mean(1)
        return ScoreBatch(maps.flatten(1).amax(1), maps)


TOY = Method("toy", "the mean training image (a test's toy method)", ToySettings, train_toy,
             (Scorer("toy", lambda run, options: ToyScorer(run.model("toy.safetensors", "MeanImage"),
                                                           run.settings.gain)),),
             models=((MeanImage, MeanConfig),))


@pytest.fixture
def toy():
    methods.register(TOY)
    yield TOY
    methods.unregister("toy")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return image_folders(tmp_path_factory.mktemp("toy"), size=32, seed=5, n_train=12, n_test_normal=4,
                         n_test_anomalous=4)


def test_a_registered_method_is_trained_scored_and_reported_by_the_cli(toy, folders, tmp_path, capsys):
    run, scores = tmp_path / "run", tmp_path / "scores"
    assert main(["train", "toy", "--data", str(folders / "train"), "--out", str(run), "--set", "gain=2"]) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "trained" and record["settings"]["gain"] == 2.0 and record["summary"]["images"] == 11
    assert type(checkpoint.load_model(run / "toy.safetensors")).__name__ == "MeanImage"
    assert main(["score", "toy", "--run", str(run), "--data", str(folders / "test"), "--out", str(scores)]) == 0
    summary = json.loads((scores / "summary.json").read_text())
    assert summary["method"] == "toy" and summary["images"] == 8 and "metrics" in summary
    assert main(["report", "--scores", str(scores)]) == 0
    assert (scores / "index.html").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "toy: the mean training image" in capsys.readouterr().out


def test_its_settings_are_typed_and_its_scorers_listed(toy, folders, tmp_path, capsys):
    assert main(["train", "toy", "--data", str(folders / "train"), "--out", str(tmp_path / "r"),
                 "--set", "gain=loud"]) == 2
    assert "setting gain" in capsys.readouterr().err
    assert main(["train", "toy", "--data", str(folders / "train"), "--out", str(tmp_path / "r")]) == 0
    assert main(["score", "regenerative", "--run", str(tmp_path / "r"), "--data", str(folders / "test"),
                 "--out", str(tmp_path / "s")]) == 2
    assert "scores with toy, not regenerative" in capsys.readouterr().err


def test_an_entry_point_registers_a_method(monkeypatch):
    class EntryPoint:
        name = "toy"

        @staticmethod
        def load():
            return TOY

    monkeypatch.setattr(registry, "entry_points", lambda group: [EntryPoint] if group == "vqfast.methods" else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "toy" in registry.names() and registry.get("toy") is TOY
    finally:
        methods.unregister("toy")


def test_a_broken_entry_point_is_left_out_with_a_warning(monkeypatch):
    class Broken:
        name, value = "broken", "somepkg:METHOD"

        @staticmethod
        def load():
            raise ImportError("no module named somepkg")

    monkeypatch.setattr(registry, "entry_points", lambda group: [Broken])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.warns(UserWarning, match="'broken'.*not loaded.*somepkg"):
        names = registry.names()
    assert "broken" not in names and "vqvae" in names


def test_registering_refuses_clashes_and_non_methods(toy):
    with pytest.raises(ValueError, match="registered already"):
        methods.register(TOY)
    with pytest.raises(TypeError):
        methods.register("toy")
    with pytest.raises(ValueError, match="no scorer"):
        methods.register(dataclasses.replace(TOY, name="empty", scorers=()))


def test_every_builtin_method_has_typed_settings_with_help():
    for name in methods.names():
        method = methods.get(name)
        assert issubclass(method.settings, Settings) and method.scorers
        for field in dataclasses.fields(method.settings):
            assert field.metadata.get("help"), f"{name}.{field.name} has no help"
        assert method.settings.parse({}).record() == dataclasses.asdict(method.settings())


def test_preset_paper_gives_every_setting_its_papers_value():
    """--set preset=paper: the papers' sizes, rates and batches, what is given still wins;
    --help says each paper value beside the CPU default."""
    gpt2 = methods.get("gpt2").settings.parse({"preset": "paper"})
    assert (gpt2.layers, gpt2.width, gpt2.heads, gpt2.lr) == (24, 1024, 16, 2.25e-5)  # gpt2-medium
    performer = methods.get("performer").settings.parse({"preset": "paper", "epochs": "3"})
    assert (performer.layers, performer.width, performer.lr, performer.batch_size) == (16, 32, 1e-3, 1)
    assert performer.epochs == 3
    vqgan = methods.get("vqgan").settings.parse({"preset": "paper"})
    assert (vqgan.size, vqgan.batch_size, vqgan.lr) == (128, 10, 5e-5)
    assert methods.get("vqvae").settings.parse({"preset": "paper"}).lr == 1e-4
    assert methods.get("vqvae").settings.parse({}).lr == 1e-3
    with pytest.raises(methods.SettingError, match="setting preset"):
        methods.get("vqvae").settings.parse({"preset": "gpu"})
    assert "lr=0.0003 (paper: 2.25e-05)" in "; ".join(methods.get("gpt2").settings.describe(own=True))


def test_a_run_recorded_before_a_setting_existed_still_resumes(folders, tmp_path):
    """Settings added in a later version count as their defaults on --resume."""
    run = tmp_path / "r"
    assert main(["train", "vqvae", "--data", str(folders / "train"), "--out", str(run), "--size", "32",
                 "--epochs", "1", "--set", "hidden=8", "--set", "codes=8", "--set", "code_dim=4",
                 "--set", "downsamples=2", "--set", "res_blocks=1"]) == 0
    record = json.loads((run / "run.json").read_text())
    del record["settings"]["preset"]
    (run / "run.json").write_text(json.dumps(record))
    assert main(["train", "vqvae", "--data", str(folders / "train"), "--out", str(run), "--size", "32",
                 "--epochs", "1", "--set", "hidden=8", "--set", "codes=8", "--set", "code_dim=4",
                 "--set", "downsamples=2", "--set", "res_blocks=1", "--resume"]) == 0


def test_the_density_papers_vqvae_is_its_vqgan_without_the_gan(folders, tmp_path):
    """density-vqvae trains the VQ-GAN architecture with no discriminator and no perceptual
    loss, and its priors take the paper's VQ-VAE thresholds (the vqgan run's take the
    VQ-GAN's)."""
    vq, prior = tmp_path / "vq", tmp_path / "gpt2"
    assert main(["train", "density-vqvae", "--data", str(folders / "train"), "--out", str(vq), "--size", "32",
                 "--epochs", "1"]) == 0
    model = checkpoint.load_model(vq / "model" / "model.safetensors")
    assert type(model).__name__ == "VQGAN" and not model.config.adversarial and model.config.perceptual_weight == 0
    assert model.discriminator is None
    _small_prior("gpt2", folders, vq, prior)
    scorer, _ = load_scorer(prior, "pixel")  # lambda_P: the 80th percentile over the VQ-VAE, 90th the VQ-GAN
    assert scorer.percentile == PAPER_PERCENTILES[("VQVAE", "gpt2")][1] != PAPER_PERCENTILES[("VQGAN", "gpt2")][1]


def _tiny_vq(folders, out):
    assert main(["train", "vqvae", "--data", str(folders / "train"), "--out", str(out), "--size", "32", "--epochs", "1",
                 "--set", "hidden=8", "--set", "codes=8", "--set", "code_dim=4", "--set", "downsamples=2",
                 "--set", "res_blocks=1"]) == 0


def _small_prior(method, folders, vq, out, *extra):
    """A one-layer prior of ``method`` on the VQ run's grids, trained one epoch (``extra``: flags)."""
    assert main(["train", method, "--vq", str(vq), "--data", str(folders / "train"), "--out", str(out),
                 "--epochs", "1", "--set", "layers=1", "--set", "width=16", "--set", "heads=2", *extra]) == 0


def test_kde_takes_the_papers_dropout_decodes_and_other_scorers_refuse_them(folders, tmp_path, capsys):
    vq, prior = tmp_path / "vq", tmp_path / "gpt2"
    _tiny_vq(folders, vq)
    _small_prior("gpt2", folders, vq, prior)
    scorer, _ = load_scorer(prior, "kde", restorations=2, dropout_decodes=3)
    assert scorer.dropout_decodes == 3 and scorer.restorations == 2
    assert (load_scorer(prior, "kde")[0].restorations, load_scorer(prior, "kde")[0].dropout_decodes) == (5, 1)
    paper = tmp_path / "gpt2_paper"  # the paper preset, its sizes overridden for a test
    _small_prior("gpt2", folders, vq, paper, "--set", "preset=paper")
    kde = load_scorer(paper, "kde")[0]
    assert (kde.restorations, kde.dropout_decodes) == (20, 20)  # the Performer paper's KDE maps
    capsys.readouterr()
    assert main(["score", "pixel", "--run", str(prior), "--data", str(folders / "test"), "--out", str(tmp_path / "s"),
                 "--dropout-decodes", "4"]) == 2
    assert "only kde decodes with dropout, not pixel" in capsys.readouterr().err


def test_a_performer_run_trains_by_iltm_on_augmented_images(folders, tmp_path, monkeypatch):
    """vqfast train performer: ILTM's rounds on the paper's augmented images (encoded per
    epoch, masks warped along), then its KDE maps score."""
    made = []

    class Spy(priors.AugmentedGrids):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(self.masks is not None)

    monkeypatch.setattr(priors, "AugmentedGrids", Spy)
    vq, prior = tmp_path / "vq", tmp_path / "performer"
    _tiny_vq(folders, vq)
    _small_prior("performer", folders, vq, prior, "--epochs", "2")
    record = json.loads((prior / "run.json").read_text())
    assert record["status"] == "trained" and record["settings"]["augment"] is True
    assert (prior / "iltm" / "round_1" / "masks.safetensors").is_file()
    assert made == [False, True]  # round 1 unmasked, round 2 with the suspected tokens
    assert main(["score", "kde", "--run", str(prior), "--data", str(folders / "test"), "--out", str(tmp_path / "s"),
                 "--threshold", "1", "--restorations", "2"]) == 0
