"""Golden numbers for the policy losses, worked out by hand in the comments, plus gradient,
masking, off-policy and config checks. Everything is float64 so the hand numbers are exact."""

import math

import pytest
import torch

from reasonrl.rl import losses
from reasonrl.rl.losses import LossConfig, get_loss, loss_names, mask_stale_tokens, register_loss

D = torch.float64
LOSSES = ["grpo", "dapo", "gspo", "gspo_token"]


def tensor(x):
    return torch.tensor(x, dtype=D)


def logp_from_ratios(ratios, old=-1.0):
    """old_logp = `old` everywhere, logp = old_logp + log(ratio) as a leaf with grad."""
    old_logp = torch.full((len(ratios), len(ratios[0])), old, dtype=D)
    return (old_logp + tensor(ratios).log()).requires_grad_(), old_logp


def run(name, logp, old_logp, adv, mask, behaviour_logp=None, ref_logp=None, **cfg):
    """(loss, stats, d loss / d logp)."""
    logp = logp.detach().clone().requires_grad_()
    loss, stats = get_loss(name)(
        logp, old_logp, behaviour_logp, adv, torch.tensor(mask), LossConfig(name=name, **cfg), ref_logp=ref_logp
    )
    loss.backward()
    return loss.detach(), stats, logp.grad


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=D), torch.as_tensor(expected, dtype=D), rtol=1e-9, atol=1e-12)


# The 2x3 example of the GRPO/DAPO tests. Ratios rho = pi_theta/pi_old; A per sample.
#   sample 0, A = +1: rho = [1.5, 0.5, 1.25]
#   sample 1, A = -2: rho = [1.5, 0.6, (9.0: padding)], mask [1, 1, 0]
RATIOS = [[1.5, 0.5, 1.25], [1.5, 0.6, 9.0]]
ADV = tensor([1.0, -2.0])
MASK = [[1, 1, 1], [1, 1, 0]]


def test_grpo_by_hand():
    logp, old = logp_from_ratios(RATIOS)
    loss, stats, grad = run("grpo", logp, old, ADV, MASK)
    # eps = 0.2, clip range [0.8, 1.2]; per-token loss = -min(rho A, clip(rho) A)
    #   s0: rho 1.5,  A>0: min(1.5, 1.2) = 1.2 -> -1.2   clipped (upper side)
    #       rho 0.5,  A>0: min(0.5, 0.8) = 0.5 -> -0.5
    #       rho 1.25, A>0: min(1.25, 1.2) = 1.2 -> -1.2  clipped
    #   s1: rho 1.5,  A=-2: min(-3.0, -2.4) = -3.0 -> 3.0
    #       rho 0.6,  A=-2: min(-1.2, -1.6) = -1.6 -> 1.6   clipped (lower side)
    # token mean per sample: s0 = -2.9/3, s1 = 4.6/2 = 2.3; mean of samples = (-2.9/3 + 2.3)/2 = 2/3
    close(loss, 2 / 3)
    # d/dlogp of -A rho / |o_i| / |S| where unclipped (d rho/dlogp = rho), 0 where clipped:
    #   s0 t1: -(1)(0.5)/3/2 = -1/12;  s1 t0: -(-2)(1.5)/2/2 = 0.75;  padding: 0
    close(grad, [[0.0, -1 / 12, 0.0], [0.75, 0.0, 0.0]])
    assert grad[0, 0] == 0 and grad[0, 2] == 0 and grad[1, 1] == 0  # clipped tokens: exactly no gradient
    close(stats["clip_fraction"], 3 / 5)
    close(stats["ratio_mean"], (1.5 + 0.5 + 1.25 + 1.5 + 0.6) / 5)  # 1.07
    # approx_kl: k3 of rho per token, rho - 1 - log rho, token mean
    close(stats["approx_kl"], sum(r - 1 - math.log(r) for r in [1.5, 0.5, 1.25, 1.5, 0.6]) / 5)
    close(stats["denominator"], 2.0)  # samples
    assert "kl_ref" not in stats and "is_weight_mean" not in stats


def test_dapo_by_hand():
    logp, old = logp_from_ratios(RATIOS)
    loss, stats, grad = run("dapo", logp, old, ADV, MASK)
    # clip-higher: range [0.8, 1.28]
    #   s0: rho 1.5 -> 1.28 -> -1.28 clipped;  0.5 -> -0.5;  1.25 (inside now) -> -1.25
    #   s1: rho 1.5, A=-2 -> min(-3, -2.56) = -3 -> 3.0;  0.6 -> min(-1.2, -1.6) -> 1.6 clipped
    # token-level: (-1.28 - 0.5 - 1.25 + 3.0 + 1.6) / 5 tokens = 1.57 / 5 = 0.314
    close(loss, 0.314)
    # -A rho / 5 where unclipped: s0 t1 -0.1, s0 t2 -0.25, s1 t0 +0.6
    close(grad, [[0.0, -0.1, -0.25], [0.6, 0.0, 0.0]])
    close(stats["clip_fraction"], 2 / 5)
    close(stats["denominator"], 5.0)  # tokens


def test_gspo_by_hand_with_paper_clip():
    # log rho per token (old_logp = -1); s_i = exp(mean over the sample's tokens)
    log_rho = tensor([[0.3, -0.1, 0.1], [0.002, 0.0, 5.0], [-0.01, 7.0, 7.0], [1.0, 1.0, 1.0]])
    mask = [[1, 1, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]]
    adv = tensor([1.0, -2.0, -1.0, 5.0])
    old = torch.full((4, 3), -1.0, dtype=D)
    loss, stats, grad = run("gspo", old + log_rho, old, adv, mask)
    # clip range [1 - 3e-4, 1 + 4e-4] = [0.9997, 1.0004]
    #   s0 = e^0.1 = 1.10517,  A=+1: min(1.10517, 1.0004)       -> -1.0004   clipped
    #   s1 = e^0.001 = 1.0010005, A=-2: min(-2.002001, -2.0008) -> +2e^0.001 unclipped
    #   s2 = e^-0.01 = 0.99005, A=-1: min(-0.99005, -0.9997)    -> +0.9997   clipped
    #   s3: no training token, not counted
    close(loss, (-1.0004 + 2 * math.exp(0.001) + 0.9997) / 3)
    # only s1 has a gradient: -A * ds1/dlogp_t / 3 = 2 * (s1 / 2) / 3 = e^0.001 / 3 on its 2 tokens
    close(grad, [[0, 0, 0], [math.exp(0.001) / 3, math.exp(0.001) / 3, 0], [0, 0, 0], [0, 0, 0]])
    close(stats["clip_fraction"], 2 / 3)  # samples
    close(stats["ratio_mean"], (math.exp(0.1) + math.exp(0.001) + math.exp(-0.01)) / 3)
    close(stats["denominator"], 3.0)
    # GSPO-token has the same value and gradient when A is one value per sample
    loss_t, _, grad_t = run("gspo_token", old + log_rho, old, adv, mask)
    close(loss_t, loss)
    close(grad_t, grad)


def test_gspo_token_uses_per_token_advantages():
    # one sample, log rho = [0.0002, 0]: s = e^0.0001 = 1.0001, inside [0.9997, 1.0004]
    logp, old = logp_from_ratios([[math.exp(0.0002), 1.0]])
    adv = tensor([[1.0, -1.0]])
    loss, _, grad = run("gspo_token", logp, old, adv, [[1, 1]])
    # per-token loss -A_t s = [-s, +s], mean 0; d s_t/d logp_t = s_t (sg[s] e^{logp_t - sg logp_t})
    # gradient -A_t s / 2 = [-s/2, +s/2]
    s = math.exp(0.0001)
    close(loss, 0.0)
    close(grad, [[-s / 2, s / 2]])
    # GSPO sees only the sample's mean advantage, 0: no gradient at all
    _, _, grad_seq = run("gspo", logp, old, adv, [[1, 1]])
    close(grad_seq, [[0.0, 0.0]])


@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_gspo_clamps_sequence_log_ratio(name):
    # log s = 30 is clamped to 10 before exp: A = -1 takes the unclipped side, loss = e^10;
    # the clamp is active, so no gradient (rather than an e^30 one)
    logp, old = logp_from_ratios([[math.exp(30.0), math.exp(30.0)]])
    loss, _, grad = run(name, logp, old, tensor([-1.0]), [[1, 1]])
    close(loss, math.exp(10.0))
    close(grad, [[0.0, 0.0]])


@pytest.mark.parametrize("name,k_coef", [("grpo", 3 / 8), ("gspo", 3 / 8), ("gspo_token", 3 / 8), ("dapo", 2 / 5)])
def test_reference_kl_k3_aggregated_like_the_policy_term(name, k_coef):
    # rho = 1 and A = 0, so the policy term is 0 and the loss is beta * aggregated k3.
    # d = log pi_ref - log pi_theta: s0 = [ln 2, 0, pad], s1 = [ln 2, ln 2, ln 2]
    # k3 = e^d - d - 1: k = 2 - ln 2 - 1 = 1 - ln 2 for d = ln 2, 0 for d = 0
    #   per-sample token mean, then samples: (k/2 + k)/2 = 3k/4;  beta 0.5 -> 3k/8
    #   token mean (DAPO): (k + 3k)/5 = 4k/5;                     beta 0.5 -> 2k/5
    k = 1 - math.log(2)
    logp, old = logp_from_ratios([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    ln2 = math.log(2)
    ref = old + tensor([[ln2, 0.0, 99.0], [ln2, ln2, ln2]])
    loss, stats, grad = run(name, logp, old, tensor([0.0, 0.0]), [[1, 1, 0], [1, 1, 1]], ref_logp=ref, beta=0.5)
    close(loss, k_coef * k)
    close(stats["kl_ref"], 4 * k / 5)  # token mean for every loss
    # d k3/d logp = 1 - e^d = -1 where d = ln 2; times beta and the aggregation weight
    if name == "dapo":
        close(grad, [[-0.1, 0, 0], [-0.1, -0.1, -0.1]])  # 0.5 * -1 / 5
    else:
        close(grad, [[-0.125, 0, 0], [-1 / 12, -1 / 12, -1 / 12]])  # 0.5 * -1 / |o_i| / 2


def test_beta_without_reference_raises():
    logp, old = logp_from_ratios([[1.0]])
    with pytest.raises(ValueError, match="ref_logp"):
        run("grpo", logp, old, tensor([1.0]), [[1]], beta=0.1)


# ---------------------------------------------------------------- off-policy corrections

# one sample, rho = pi_theta/pi_old = 1, A = 1; pi_old/pi_behav = [3, 0.5, 1]
BEHAVIOUR_RATIOS = [3.0, 0.5, 1.0]


@pytest.mark.parametrize(
    "cfg,weights",
    [
        (dict(off_policy="tis"), [2.0, 0.5, 1.0]),  # min(w, C=2)
        (dict(off_policy="tis", tis_cap=4.0), [3.0, 0.5, 1.0]),
        (dict(off_policy="decoupled"), [3.0, 0.5, 1.0]),  # no cap: all kept
        (dict(off_policy="decoupled", decoupled_cap=2.5), [0.0, 0.5, 1.0]),  # 3 > 2.5: dropped, not truncated
    ],
)
def test_token_weights_by_hand(cfg, weights):
    logp, old = logp_from_ratios([[1.0, 1.0, 1.0]])
    behaviour = old - tensor([BEHAVIOUR_RATIOS]).log()
    loss, stats, grad = run("grpo", logp, old, tensor([1.0]), [[1, 1, 1]], behaviour_logp=behaviour, **cfg)
    # per-token loss -w * min(1 * 1, clip(1) * 1) = -w; token mean over 3; gradient -w/3
    close(loss, -sum(weights) / 3)
    close(grad, [[-w / 3 for w in weights]])
    close(stats["is_weight_mean"], sum(weights) / 3)


def test_decoupled_clips_against_the_proximal_policy():
    # pi_theta/pi_prox = 1.5, pi_prox/pi_behav = 0.5, A = 1, eps 0.2:
    # loss = -0.5 * min(1.5, 1.2) = -0.6, clipped, so no gradient.
    # (Centring the clip on pi_behav instead would give rho = 0.75, loss -0.75, gradient -0.75.)
    logp, prox = logp_from_ratios([[1.5]])
    behaviour = prox - math.log(0.5)
    loss, _, grad = run("grpo", logp, prox, tensor([1.0]), [[1]], behaviour_logp=behaviour, off_policy="decoupled")
    close(loss, -0.6)
    close(grad, [[0.0]])


@pytest.mark.parametrize(
    "cfg,expected",
    [
        (dict(off_policy="tis"), -(2.0 + 0.5) / 2),  # w = [min(3, 2), 0.5]
        (dict(off_policy="decoupled"), -(3.0 + 0.5) / 2),
        (dict(off_policy="decoupled", decoupled_cap=2.5), -(0.0 + 0.5) / 2),
    ],
)
@pytest.mark.parametrize("name", ["gspo", "gspo_token"])
def test_gspo_weights_are_per_sample_geometric_means(name, cfg, expected):
    # log(pi_old/pi_behav): s0 = [ln 9, 0] -> mean ln 3 -> w0 = 3;  s1 = [ln 0.25, 0] -> w1 = 0.5
    # (per-token TIS would give s0 the weights [2, 1] instead). s = 1, A = 1: loss_i = -w_i.
    logp, old = logp_from_ratios([[1.0, 1.0], [1.0, 1.0]])
    behaviour = old - tensor([[math.log(9), 0.0], [math.log(0.25), 0.0]])
    loss, _, _ = run(name, logp, old, tensor([1.0, 1.0]), [[1, 1], [1, 1]], behaviour_logp=behaviour, **cfg)
    close(loss, expected)


@pytest.mark.parametrize("mode", ["tis", "decoupled"])
@pytest.mark.parametrize("name", LOSSES)
def test_weights_compose_with_every_loss(name, mode):
    logp, old = logp_from_ratios(RATIOS)
    base_loss, _, base_grad = run(name, logp, old, ADV, MASK)
    # pi_behav = pi_old: weight 1, identical to no correction
    loss, stats, grad = run(name, logp, old, ADV, MASK, behaviour_logp=old, off_policy=mode)
    close(loss, base_loss)
    close(grad, base_grad)
    close(stats["is_weight_mean"], 1.0)
    # pi_old/pi_behav = 0.5 on every token (per token and as a geometric mean): half of everything
    loss, stats, grad = run(name, logp, old, ADV, MASK, behaviour_logp=old + math.log(2), off_policy=mode)
    close(loss, 0.5 * base_loss)
    close(grad, 0.5 * base_grad)
    close(stats["is_weight_mean"], 0.5)
    assert base_loss != 0


@pytest.mark.parametrize("mode", ["tis", "decoupled"])
def test_weighting_modes_need_behaviour_logp(mode):
    logp, old = logp_from_ratios([[1.0]])
    with pytest.raises(ValueError, match="behaviour_logp"):
        run("grpo", logp, old, tensor([1.0]), [[1]], off_policy=mode)


def test_mask_stale_tokens_by_hand():
    versions = torch.tensor([[3, 3, 5, 5], [5, 5, 5, 0]])  # s0: 2 tokens from policy 3, resumed under 5
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])  # s1's last position is padding (version 0)
    out = mask_stale_tokens(mask, versions, current_version=5)
    assert out.tolist() == [[False, False, True, True], [True, True, True, False]]
    with pytest.raises(ValueError, match="current_version=4"):
        mask_stale_tokens(mask, versions, current_version=4)  # a token newer than "current": bookkeeping bug


@pytest.mark.parametrize("name", LOSSES)
def test_mask_mode_gives_exactly_zero_gradient_on_stale_prefix(name):
    versions = torch.tensor([[3, 3, 5, 5], [4, 5, 5, 5]])
    mask = mask_stale_tokens(torch.ones(2, 4, dtype=torch.bool), versions, current_version=5).tolist()
    # stale prefix tokens carry rho far from 1; fresh tokens rho = 1 (unclipped under every loss)
    logp, old = logp_from_ratios([[1.3, 0.7, 1.0, 1.0], [2.0, 1.0, 1.0, 1.0]])
    adv = tensor([1.0, -1.0])
    loss, _, grad = run(name, logp, old, adv, mask, off_policy="mask")
    stale = versions < 5
    assert (grad[stale] == 0).all()  # exactly zero, not approximately
    assert (grad[~stale] != 0).all()
    # and the prefix does not enter the value either
    moved = logp.detach().clone()
    moved[stale] += 3.0
    close(run(name, moved, old, adv, mask, off_policy="mask")[0], loss)


# ---------------------------------------------------------------- invariance and robustness


@pytest.mark.parametrize("name", LOSSES)
def test_empty_samples_do_not_count_and_do_not_nan(name):
    logp, old = logp_from_ratios(RATIOS)
    loss, stats, grad = run(name, logp, old, ADV, MASK)
    # a third, zero-length sample (nothing trains) leaves value, gradient and stats unchanged
    logp3, old3 = logp_from_ratios(RATIOS + [[4.0, 0.1, 2.0]])
    loss3, stats3, grad3 = run(name, logp3, old3, tensor([1.0, -2.0, 7.0]), MASK + [[0, 0, 0]])
    close(loss3, loss)
    close(grad3[:2], grad)
    close(grad3[2], [0.0, 0.0, 0.0])
    for key in stats:
        close(stats3[key], stats[key])
    # nothing trains at all: loss 0 with zero gradient, finite stats
    loss0, stats0, grad0 = run(name, logp, old, ADV, [[0, 0, 0], [0, 0, 0]])
    assert loss0 == 0 and (grad0 == 0).all()
    assert all(torch.isfinite(v) for v in stats0.values())


@pytest.mark.parametrize("mode", ["none", "tis", "decoupled"])
@pytest.mark.parametrize("name", LOSSES)
def test_padding_values_never_matter(name, mode):
    # NaN and inf in every per-token input at padded positions: same loss, finite zero gradient there
    logp, old = logp_from_ratios(RATIOS)
    behaviour, ref = old - 0.1, old + 0.2
    clean = run(name, logp, old, ADV, MASK, behaviour, ref, off_policy=mode, beta=0.1)

    def poison(x, value):
        x = x.detach().clone()
        x[1, 2] = value
        return x

    dirty = run(
        name, poison(logp, float("nan")), poison(old, float("inf")), ADV, MASK,
        poison(behaviour, float("-inf")), poison(ref, float("nan")), off_policy=mode, beta=0.1,
    )
    close(dirty[0], clean[0])
    close(dirty[2], clean[2])
    assert dirty[2][1, 2] == 0
    for key in clean[1]:
        close(dirty[1][key], clean[1][key])


@pytest.mark.parametrize("name", LOSSES)
def test_advantages_per_sample_equal_broadcast_per_token(name):
    logp, old = logp_from_ratios(RATIOS)
    by_sample = run(name, logp, old, ADV, MASK)
    by_token = run(name, logp, old, ADV[:, None].expand(2, 3).clone(), MASK)
    close(by_token[0], by_sample[0])
    close(by_token[2], by_sample[2])
    with pytest.raises(ValueError, match="advantages"):
        run(name, logp, old, torch.zeros(2, 4, dtype=D), MASK)


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_reaches_only_logp(name):
    # old/behaviour/ref log-probs and advantages are data: a graph on them must not get gradient
    logp, old = logp_from_ratios(RATIOS)
    old, behaviour, ref, adv = (x.detach().clone().requires_grad_() for x in (old, old - 0.1, old + 0.2, ADV))
    loss, _ = get_loss(name)(
        logp, old, behaviour, adv, torch.tensor(MASK), LossConfig(name=name, off_policy="tis", beta=0.1), ref_logp=ref
    )
    loss.backward()
    assert logp.grad is not None
    assert old.grad is None and behaviour.grad is None and ref.grad is None and adv.grad is None


@pytest.mark.parametrize("name", LOSSES)
def test_denominator_makes_microbatch_splits_exact(name):
    # backward(loss_mb * denominator_mb) over micro-batches, divided by the summed denominators,
    # equals the gradient of the whole batch (token-level DAPO included)
    ratios = [[1.1, 0.9, 1.0, 1.2], [0.95, 1.05, 1.0, 1.0], [1.3, 1.0, 0.8, 1.0], [1.0, 1.02, 0.99, 1.0]]
    mask = [[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    adv = tensor([1.0, -0.5, 2.0, 1.0])
    logp, old = logp_from_ratios(ratios)
    _, _, full_grad = run(name, logp, old, adv, mask)
    grads, total = [], 0.0
    for rows in (slice(0, 1), slice(1, 4)):
        loss, stats, grad = run(name, logp[rows], old[rows], adv[rows], mask[rows])
        grads.append(grad * stats["denominator"])
        total += stats["denominator"]
    close(torch.cat(grads) / total, full_grad)


def test_masked_mean_of_nothing_is_zero():
    x = tensor([[1.0, float("nan")], [3.0, 5.0]])
    mask = torch.tensor([[False, False], [True, False]])
    close(losses.masked_mean(x, mask, dim=-1), [0.0, 3.0])  # empty row: 0, not 0/0
    close(losses.masked_mean(x, torch.zeros(2, 2, dtype=torch.bool)), 0.0)


# ---------------------------------------------------------------- config and registry


def test_clip_range_defaults():
    assert LossConfig().clip_range(0.2, None) == (0.2, 0.2)  # GRPO: symmetric
    assert LossConfig(eps_low=0.1).clip_range(0.2, None) == (0.1, 0.1)
    assert LossConfig(eps_low=0.1).clip_range(0.2, 0.28) == (0.1, 0.28)  # DAPO keeps its high
    assert LossConfig(eps_high=0.5).clip_range(3e-4, 4e-4) == (3e-4, 0.5)


@pytest.mark.parametrize(
    "field,value",
    [
        ("eps_low", 0.0), ("eps_low", 1.5), ("eps_low", float("nan")), ("eps_low", True),
        ("eps_high", 0.0), ("eps_high", "0.28"), ("beta", -0.1), ("tis_cap", 0.0),
        ("decoupled_cap", 1.0), ("max_log_ratio", 0), ("max_log_ratio", float("inf")),
    ],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"LossConfig\.{field} must be"):
        LossConfig(**{field: value})


def test_config_errors_list_the_choices():
    with pytest.raises(ValueError, match=r"LossConfig\.off_policy must be one of none, mask, tis, decoupled"):
        LossConfig(off_policy="icepop")
    with pytest.raises(ValueError, match=r"LossConfig\.name: unknown loss 'ppo'; known: dapo, grpo, gspo, gspo_token"):
        LossConfig(name="ppo")


def test_registry():
    assert set(LOSSES) <= set(loss_names())
    with pytest.raises(ValueError, match=r"unknown loss 'ppo'; known: dapo, grpo, gspo, gspo_token"):
        get_loss("ppo")
    with pytest.raises(ValueError, match="already registered"):
        register_loss("grpo")(lambda *a, **k: None)


def test_register_a_new_loss(monkeypatch):
    monkeypatch.setattr(losses, "_LOSSES", dict(losses._LOSSES))  # keep the real registry clean

    @register_loss("mine")
    def mine(logp, old_logp, behaviour_logp, advantages, mask, cfg, *, ref_logp=None):
        return logp.sum(), {}

    assert get_loss("mine") is mine
    assert LossConfig(name="mine").name == "mine"
