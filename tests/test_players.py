"""Models with several players: one Adam each, the model's own update order, a non-finite guard
per player, checkpoints and exact resume with several optimizers, and the critic-won warning."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from vaekit.config import TrainConfig
from vaekit.errors import TrainingError
from vaekit.models import ModelConfig
from vaekit.models.vae import VAE
from vaekit.training.steps import AutogradStep, HandDerivedStep, PlayersStep, player_optimizers
from vaekit.training.trainer import Trainer

from resume_helpers import assert_same_training, interrupt_inside_an_epoch
from test_trainer import tiny_data


class CriticVAE(VAE):
    """A VAE with a critic on z telling encoded codes from prior draws (an AAE-like toy)."""

    extra_terms = ("critic_loss", "critic_acc")
    critic_accuracy = "critic_acc"

    def __init__(self, config, spec, *, only=None, nan_critic=False, adv_weight=0.5):
        super().__init__(config, spec)
        self.critic = nn.Sequential(nn.Linear(config.latent_dim, 16), nn.ReLU(), nn.Linear(16, 1))
        self.only, self.nan_critic, self.adv_weight = only, nan_critic, adv_weight

    def players(self):
        critic = list(self.critic.parameters())
        ids = {id(p) for p in critic}
        return {"critic": {"params": critic, "lr_scale": 0.5, "betas": (0.5, 0.9)},
                "vae": {"params": [p for p in self.parameters() if id(p) not in ids]}}

    def _codes(self, x):
        mu, logvar = self.encode(x)
        return self.reparameterize(mu, logvar)

    def train_step(self, x, *, update, kl_weight=1.0):
        z = self._codes(x)
        prior = torch.randn_like(z)
        real, fake = self.critic(prior), self.critic(z.detach())
        d_loss = (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                  + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
        if self.nan_critic:
            d_loss = d_loss * math.nan
        acc = ((real > 0).float().mean() + (fake < 0).float().mean()) / 2
        if self.only in (None, "critic"):
            update("critic", d_loss)
        out = self.loss(x, kl_weight=kl_weight)
        g = self.critic(self._codes(x))
        loss = out["loss"] + self.adv_weight * F.binary_cross_entropy_with_logits(g, torch.ones_like(g))
        if self.only in (None, "vae"):
            update("vae", loss)
        return {**out, "loss": loss.detach(), "critic_loss": d_loss.detach(), "critic_acc": acc}


def make(run_dir=None, epochs=3, **kw):
    data = tiny_data()
    torch.manual_seed(0)
    model = CriticVAE(ModelConfig(hidden=[32], latent_dim=4).resolved(data.spec), data.spec, **{k: kw.pop(k) for k in list(kw)
                                                                              if k in ("only", "nan_critic")})
    cfg = TrainConfig(epochs=epochs, batch_size=32, seed=0, device="cpu", **kw)
    return Trainer(model, data, cfg, run_dir, progress=False)


def test_each_player_gets_its_own_adam_with_its_scale_and_betas():
    t = make()
    assert set(t.opts) == {"critic", "vae"}
    assert t.opts["critic"].lr == pytest.approx(0.5 * t.cfg.lr) and t.opts["critic"].betas == (0.5, 0.9)
    assert t.fast is None and not t.use_graphs
    n_critic = sum(p.numel() for p in t.model.critic.parameters())
    assert sum(p.numel() for p in t.opts["critic"].params) == n_critic
    assert sum(p.numel() for p in t.opts["vae"].params) == sum(p.numel() for p in t.model.parameters()) - n_critic


def test_the_engine_is_chosen_once_by_what_the_model_is():
    t = make(epochs=1)
    t.fit()
    assert isinstance(t.step, PlayersStep)
    from test_trainer import make_trainer

    plain = make_trainer(epochs=1)
    plain.fit()
    assert isinstance(plain.step, HandDerivedStep)
    slow = make_trainer(epochs=1, fast_path=False)
    slow.fit()
    assert type(slow.step) is AutogradStep


@pytest.mark.parametrize("only", ["critic", "vae"])
def test_an_update_moves_only_its_players_parameters(only):
    t = make(epochs=1, only=only)
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    t.fit()
    for n, p in t.model.named_parameters():
        moved = not torch.equal(before[n], p.detach())
        assert moved == (n.startswith("critic.") == (only == "critic")), n


def test_two_players_learn_and_the_terms_are_logged():
    t = make(epochs=4)
    h = t.fit()
    assert all(math.isfinite(r["train_critic_loss"]) and 0 <= r["train_critic_acc"] <= 1 for r in h)
    assert h[-1]["val_elbo"] > h[0]["val_elbo"]
    assert h[-1]["step"] == 4 * 7  # 200 examples in batches of 32


def test_a_non_finite_player_is_skipped_alone_and_stops_after_too_many(tmp_path):
    t = make(epochs=1, nan_critic=True, max_nonfinite=100)
    critic = [p.detach().clone() for p in t.model.critic.parameters()]
    enc = [p.detach().clone() for p in t.model.encoder.parameters()]
    t.fit()
    assert all(torch.equal(a, b) for a, b in zip(critic, t.model.critic.parameters()))  # never updated
    assert not all(torch.equal(a, b) for a, b in zip(enc, t.model.encoder.parameters()))  # the VAE was
    assert t.state["skipped_by_player"] == {"critic": 7}
    stop = make(tmp_path, epochs=2, nan_critic=True, max_nonfinite=5)
    with pytest.raises(TrainingError, match="of the critic in a row"):
        stop.fit()


def test_resume_inside_an_epoch_with_several_optimizers_equals_uninterrupted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ref = make(tmp_path / "a", epochs=3)
    torch.manual_seed(1)
    ref.fit()
    t = make(tmp_path / "b", epochs=3, checkpoint_every=0)
    torch.manual_seed(1)
    interrupt_inside_an_epoch(t, save_at=10, kill_at=12)  # a checkpoint inside epoch 2, then killed
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "b" / "last.safetensors"))
    assert any(k.startswith("optim.critic.") for k in saved) and any(k.startswith("optim.vae.") for k in saved)
    r = make(tmp_path / "b", epochs=3)
    r.resume()
    assert r.state["epoch"] == 1 and r.state["epoch_pos"] > 0
    r.fit()
    assert_same_training(ref, r, ("critic", "vae"))


def test_a_critic_that_wins_a_whole_epoch_is_reported(tmp_path, capsys):
    t = make(epochs=1)
    t.progress = True
    t.model.train_step_orig = t.model.train_step

    def winning(x, **kw):
        out = t.model.train_step_orig(x, **kw)
        return {**out, "critic_acc": torch.tensor(1.0)}

    t.model.train_step = winning
    rec = t.fit()[-1]
    assert rec["critic_won"] is True and "the critic won" in capsys.readouterr().err
    quiet = make(epochs=1)
    assert "critic_won" not in quiet.fit()[-1]


def test_players_must_share_out_every_parameter_once():
    data = tiny_data()
    m = CriticVAE(ModelConfig(hidden=[8], latent_dim=2).resolved(data.spec), data.spec)
    m.players = lambda: {"critic": {"params": list(m.critic.parameters())}}
    with pytest.raises(ValueError, match="belong to no player"):
        player_optimizers(m, 1e-3, 0.0)
    m.players = lambda: {"a": {"params": list(m.parameters())}, "b": {"params": list(m.critic.parameters())}}
    with pytest.raises(ValueError, match="another player"):
        player_optimizers(m, 1e-3, 0.0)
