"""The binary tokenizer: quantiser rules, checkpoint layout at Instella-T2I's real sizes, decoding at 2x."""

import pytest
import torch
import torch.nn.functional as F

from reasonrl.vision.binary.quantizer import BinaryQuantizer, VQQuantizer
from reasonrl.vision.binary.rope import grid_positions, token_ids
from reasonrl.vision.binary.tokenizer import BitTokenizer, TokenizerConfig
from reasonrl.vision.gen.io import load_model_dir, save_model_dir

TINY = dict(encoder_layers=1, decoder_layers=1, encoder_head_dim=16, decoder_head_dim=16, encoder_num_heads=2,
            decoder_num_heads=2, axes_dims_rope=(4, 6, 6), num_latent_tkns=4, codebook_size=8)
INSTELLA = dict(encoder_layers=12, encoder_head_dim=64, encoder_num_heads=12, patch_size=16, num_latent_tkns=128,
                axes_dims_rope=(8, 28, 28), downsample_idx=(7,), decoder_layers=16, decoder_head_dim=64,
                decoder_num_heads=16, upsample_idx=(7,), codebook_size=64, image_size=1024,
                absolute_positions=False, refine_channels=0)


def test_bits_threshold_at_eval_and_straight_through_gradient():
    torch.manual_seed(0)
    q = BinaryQuantizer(bits=5, dim=8, train_temp=0.1).eval()
    h = torch.randn(3, 4, 8)
    z = q.proj(h)
    out = q(h)
    assert torch.equal(out.codes, (torch.sigmoid(z) > 0.5).float())
    assert torch.allclose(out.embedding, out.codes @ q.embed)
    assert torch.allclose(out.aux_loss, (torch.sigmoid(z) * (1 - torch.sigmoid(z))).mean())
    # d(sum of the embedding)/dz = sigmoid'(z) * (row sums of E): the gradient of sigmoid(z), not of the step
    zz = z.detach().requires_grad_(True)
    p = torch.sigmoid(zz)
    ((out.codes + p - p.detach()) @ q.embed).sum().backward()
    assert torch.allclose(zz.grad, p.detach() * (1 - p.detach()) * q.embed.sum(1))


def test_linear_straight_through_keeps_the_gradient_of_saturated_logits():
    torch.manual_seed(0)
    grads = {}
    for st in ("sigmoid", "linear"):
        q = BinaryQuantizer(bits=4, dim=4, train_temp=0.1, straight_through=st).train()
        with torch.no_grad():
            q.proj[0].weight.copy_(torch.eye(4) * 50.0)  # logits +-50: saturated
            q.proj[0].bias.zero_()
        h = torch.tensor([[[1.0, -1.0, 1.0, -1.0]]], requires_grad=True)
        out = q(h)
        assert torch.equal(out.codes, torch.tensor([[[1.0, 0.0, 1.0, 0.0]]]))  # the value is the bits either way
        out.embedding.sum().backward()
        grads[st] = h.grad
    assert grads["sigmoid"].abs().max() < 1e-12  # the paper's estimate: sigmoid'(50) vanishes
    assert torch.allclose(grads["linear"], 50.0 / 4 * q.embed.sum(1))  # dz/dh = 50, slope 1/4
    with pytest.raises(ValueError, match="straight_through"):
        BinaryQuantizer(bits=4, dim=4, straight_through="identity")


def test_a_logit_bound_pulls_only_the_logits_beyond_it_back():
    h = torch.tensor([[[1.0, -1.0, 0.5, -0.5]]], requires_grad=True)
    pulls = {}
    for bound in (0.0, 2.0):
        q = BinaryQuantizer(bits=4, dim=4, straight_through="linear", logit_bound=bound).train()
        with torch.no_grad():
            q.proj[0].weight.copy_(torch.eye(4) * 6.0)  # logits 6, -6, 3, -3
            q.proj[0].bias.zero_()
        h.grad = None
        q(h).aux_loss.backward()
        pulls[bound] = h.grad[0, 0]
    z = torch.tensor([6.0, -6.0, 3.0, -3.0])
    # the polarising loss alone pushes every logit outward (descent against the gradient grows |z|)
    assert (pulls[0.0] * z < 0).all()
    # with bound 2: gradient descent moves every logit beyond +-2 towards 0, the larger ones harder
    assert (pulls[2.0] * z > 0).all()
    assert pulls[2.0][0].abs() > 4 * pulls[2.0][2].abs()
    with pytest.raises(ValueError, match="logit_bound"):
        BinaryQuantizer(bits=4, dim=4, logit_bound=-1)


def test_straight_through_reaches_the_quantizer():
    assert BitTokenizer(TokenizerConfig(**TINY)).quantizer.straight_through == "sigmoid"
    assert BitTokenizer(TokenizerConfig(**TINY, straight_through="linear")).quantizer.straight_through == "linear"


def test_training_draws_follow_the_temperature():
    q = BinaryQuantizer(bits=1, dim=1, train_temp=1.0).train()
    with torch.no_grad():
        q.proj[0].weight.fill_(1.0)
        q.proj[0].bias.zero_()
    h = torch.full((20000, 1, 1), 0.5)  # sigmoid(0.5 / 1) = 0.622
    assert abs(float(q(h).codes.mean()) - 0.6225) < 0.02
    q.train_temp = 0.01  # sigmoid(50): always 1
    assert float(q(h).codes.mean()) == 1.0


def test_vq_codes_and_dead_code_restart():
    torch.manual_seed(0)
    q = VQQuantizer(bits=3, dim=8, code_dim=4, restart_every=2).train()
    h = torch.randn(2, 5, 8)
    out = q(h)
    assert out.codes.shape == (2, 5) and int(out.codes.max()) < 8
    assert torch.allclose(out.embedding, q.embed_codes(out.codes), atol=1e-6)
    before = q.codebook.detach().clone()
    q(h)  # second step: codes unused for 2 steps are restarted at encoder outputs
    unused = [c for c in range(8) if c not in set(out.codes.flatten().tolist())]
    assert unused and not torch.allclose(q.codebook[unused], before[unused])
    # encode (sample=False) only looks codes up, even in train mode (60 calls rewrote 249 of 256 rows)
    before = q.codebook.detach().clone()
    for _ in range(5):
        q(torch.randn(2, 5, 8), sample=False)
    assert torch.equal(q.codebook, before)


def test_reconstruction_shapes_and_twice_the_resolution():
    tok = BitTokenizer(TokenizerConfig(**TINY)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, 4, 8) and set(codes.unique().tolist()) <= {0.0, 1.0}
    assert tok.decode(codes).shape == (2, 3, 32, 32)
    assert tok.decode(codes, 64, 64).shape == (2, 3, 64, 64)
    with pytest.raises(ValueError, match="patch"):
        tok.decode(codes, 30, 30)
    up = BitTokenizer(TokenizerConfig(**{**TINY, "upsample_idx": (0,)})).eval()  # tokens split 2 x 2 once
    with pytest.raises(ValueError, match="not a multiple of 8"):  # a reshape error, or 64 images for 81
        up.decode(up.encode(torch.rand(2, 3, 32, 32)), 36, 36)


def test_positions_are_rescaled_onto_the_reference_grid():
    fine = grid_positions(16, 16, scale=8)
    assert fine[:, 0].min() == 0 and fine[:, 0].max() == 7 and len(fine[:, 0].unique()) == 16
    assert torch.equal(grid_positions(8, 8, scale=8), grid_positions(8, 8))  # the training grid is unchanged
    ids = token_ids(3, 2, 2)
    assert ids[:3].tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0]] and ids[3:, 0].eq(0).all()


def test_real_instella_layout_on_meta():
    with torch.device("meta"):
        model = BitTokenizer(TokenizerConfig(**INSTELLA))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "encoder.latent_tokens": (1, 128, 768), "encoder.patch_embedder.weight": (768, 3, 16, 16),
        "encoder.patch_embedder.bias": (768,), "encoder.transformer_blocks.11.attn.q_proj.weight": (768, 768),
        "encoder.transformer_blocks.0.attn.norm_q.weight": (64,), "encoder.transformer_blocks.0.attn.norm_k.weight": (64,),
        "encoder.transformer_blocks.0.input_layernorm.weight": (768,),
        "encoder.transformer_blocks.0.post_attention_layernorm.weight": (768,),
        "encoder.transformer_blocks.0.mlp.gate_proj.weight": (3072, 768),
        "encoder.transformer_blocks.0.mlp.down_proj.weight": (768, 3072),
        "encoder.down_layers.0.conv.weight": (768, 768, 3, 3), "encoder.norm_out.weight": (768,),
        "encoder.proj_out.weight": (768, 768), "encoder.proj_out.bias": (768,),
        "decoder.input_layer.0.weight": (768,), "decoder.input_layer.1.weight": (1024, 768),
        "decoder.input_layer.1.bias": (1024,), "decoder.transformer_blocks.15.attn.o_proj.weight": (1024, 1024),
        "decoder.up_layers.0.conv.weight": (4096, 1024, 3, 3), "decoder.up_layers.0.conv.bias": (4096,),
        "decoder.mask_tokens": (1, 1, 1024), "decoder.norm_out.weight": (1024,),
        "to_pixel.weight": (768, 1024), "to_pixel.bias": (768,),
        "quantizer.proj.0.weight": (64, 768), "quantizer.proj.0.bias": (64,), "quantizer.embed": (64, 768),
    }
    assert {k: shapes.get(k) for k in expected} == expected
    assert len(shapes) == 2 + 12 * 11 + 2 + 3 + 1 + 3 + 16 * 11 + 2 + 2 + 2 + 3  # nothing beyond the public keys
    assert not any("bias" in k for k in shapes if ".attn." in k or ".mlp." in k)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    tok = BitTokenizer(TokenizerConfig(**TINY)).eval()
    save_model_dir(tok, tok.config, tmp_path)
    back = load_model_dir(tmp_path, expect="bit_tokenizer")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert back.config == tok.config
    assert torch.equal(back.encode(x), tok.encode(x)) and torch.equal(back(x)[0], tok(x)[0])
    with pytest.raises(ValueError, match="kind"):
        load_model_dir(tmp_path, expect="smarli")


def test_config_errors():
    with pytest.raises(ValueError, match="only practical"):
        TokenizerConfig(quantizer="vq", codebook_size=17)
    with pytest.raises(ValueError, match="head size"):
        BitTokenizer(TokenizerConfig(**{**TINY, "axes_dims_rope": (4, 4, 4)}))


TINY_FLAGS = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-num-heads", "2", "--decoder-num-heads", "2",
              "--encoder-head-dim", "8", "--decoder-head-dim", "8", "--axes-dims-rope", "2", "2", "4",
              "--num-latent-tkns", "4", "--codebook-size", "4", "--steps", "1", "--images-per-step", "2",
              "--eval-images", "2", "--warmup-steps", "0"]


@pytest.mark.parametrize("flags, key", [(["--train-temp", "0"], "train_temp"), (["--train-temp", "-1"], "train_temp"),
                                        (["--train-temp", "nan"], "train_temp"), (["--upsample-idx", "5"], "upsample_idx"),
                                        (["--downsample-idx", "7"], "downsample_idx"),
                                        (["--upsample-idx", "0", "0"], "upsample_idx"),
                                        (["--object-weight", "-1"], "object_weight"), (["--lr", "0"], "lr"),
                                        (["--aux-weight", "-0.5"], "aux_weight")])
def test_bad_tokenizer_flags_are_refused_by_name_before_the_run_directory_is_made(tmp_path, capsys, flags, key):
    """They crashed inside torch, trained inverted, or were ignored, and left a config.yaml that
    refused the corrected rerun."""
    from reasonrl.cli import main

    out = tmp_path / "run"
    assert main(["train-image", "tokenizer", *TINY_FLAGS, *flags, "--out", str(out)]) == 2
    assert key in capsys.readouterr().err and not out.exists()


def test_latent_positions_tell_the_decoder_which_latent_token_is_which():
    # Without rotary positions on the latent axis the decoder is blind to the latent tokens' order: permuting
    # them leaves its output unchanged. `latent_positions` adds a learned embedding per latent index, so the
    # order matters (this is what let a decoder copy latent k to patch k within 300 steps: docs/benchmarks.md).
    cfg = dict(TINY, axes_dims_rope=(0, 8, 8))
    x = torch.randn(2, 4, 32)
    perm = torch.tensor([2, 0, 3, 1])
    torch.manual_seed(0)
    plain = BitTokenizer(TokenizerConfig(**cfg)).eval()
    assert "decoder.latent_pos" not in plain.state_dict()
    assert torch.allclose(plain.decode_embedding(x, 32, 32), plain.decode_embedding(x[:, perm], 32, 32), atol=1e-5)
    torch.manual_seed(0)
    tok = BitTokenizer(TokenizerConfig(**cfg, latent_positions=True)).eval()
    assert tok.state_dict()["decoder.latent_pos"].shape == (1, 4, 32)
    assert tok.decoder.latent_pos.abs().mean() > 0.1  # not the 0.02 of the other embeddings: it must matter at once
    out = tok.decode_embedding(x, 32, 32)
    assert not torch.allclose(out, tok.decode_embedding(x[:, perm], 32, 32), atol=1e-3)
    out.square().mean().backward()
    assert tok.decoder.latent_pos.grad is not None and tok.decoder.latent_pos.grad.abs().sum() > 0
    assert tok.decode(tok.encode(torch.rand(1, 3, 32, 32)), 64, 64).shape == (1, 3, 64, 64)  # 2x still decodes
    with pytest.raises(ValueError, match="latent positions"):
        tok.decode_embedding(x[:, :3], 32, 32)


def test_latent_positions_round_trip_and_old_checkpoints_load(tmp_path):
    torch.manual_seed(1)
    tok = BitTokenizer(TokenizerConfig(**TINY, latent_positions=True)).eval()
    save_model_dir(tok, tok.config, tmp_path)
    back = load_model_dir(tmp_path, expect="bit_tokenizer")
    assert back.config.latent_positions and torch.equal(back.decoder.latent_pos, tok.decoder.latent_pos)
    assert TokenizerConfig().latent_positions is False  # a config saved without the field loads as before


@pytest.mark.parametrize("quantizer", ["binary", "vq"])
def test_latent_mlp_makes_a_token_embedding_a_nonlinear_function_of_its_code(quantizer, tmp_path):
    # A binary token's embedding is the sum of the codebook rows its bits select: with bits a and b disjoint,
    # e(a) + e(b) = e(a | b) + e(0). `latent_mlp` adds x + MLP(RMSNorm(x)) per token before the decoder; its last
    # layer starts at zero (the identity, so training starts where it did without it), and once that layer is
    # non-zero the decoder's input is no longer linear in the bits.
    torch.manual_seed(0)
    tok = BitTokenizer(TokenizerConfig(**TINY, quantizer=quantizer, latent_mlp=16)).eval()
    assert "latent_mlp.mlp.down_proj.weight" in tok.state_dict()
    codes = tok.encode(torch.rand(2, 3, 32, 32))
    x = tok.quantizer.embed_codes(codes)
    assert torch.equal(tok.latent_mlp(x), x)
    before = tok.decode(codes)
    torch.nn.init.normal_(tok.latent_mlp.mlp.down_proj.weight, 0.0, 0.5)
    assert not torch.allclose(tok.decode(codes), before, atol=1e-3)  # decode() goes through it ...
    out, _ = tok(torch.rand(2, 3, 32, 32))
    out.square().mean().backward()  # ... and so does training
    assert tok.latent_mlp.mlp.down_proj.weight.grad.abs().sum() > 0
    if quantizer == "binary":
        bits = torch.zeros(4, 1, 8)
        bits[1, 0, :4] = bits[2, 0, 4:] = bits[3, 0] = 1  # a, b, a | b (and 0 in row 0)
        e = tok.latent_mlp(tok.quantizer.embed_codes(bits))
        assert not torch.allclose(e[1] + e[2], e[3] + e[0], atol=1e-3)
    save_model_dir(tok, tok.config, tmp_path)
    back = load_model_dir(tmp_path, expect="bit_tokenizer")
    assert back.config.latent_mlp == 16 and torch.equal(back.decode(codes), tok.decode(codes))
    plain = BitTokenizer(TokenizerConfig(**TINY, quantizer=quantizer))
    assert TokenizerConfig().latent_mlp == 0 and not any("latent_mlp" in k for k in plain.state_dict())


def test_pooled_latents_start_as_local_summaries_of_the_image():
    from reasonrl.vision.binary.encoder import latent_grid, pool_to_latents
    assert latent_grid(32) == (4, 8) and latent_grid(16) == (4, 4) and latent_grid(7) == (1, 7)
    grid = torch.arange(16.0).view(1, 1, 4, 4)
    assert pool_to_latents(grid, 4).flatten().tolist() == [2.5, 4.5, 10.5, 12.5]  # means of 2 x 2 blocks
    # With every block's output zeroed the encoder is blind to the image except through the pooling: a change in
    # one 8 x 8 region of the image moves only the latent token of that region (here K = 4 regions, patch 8).
    cfg = dict(TINY, patch_size=8)
    for pooled in (False, True):
        torch.manual_seed(0)
        tok = BitTokenizer(TokenizerConfig(**cfg, pooled_latents=pooled)).eval()
        for block in tok.encoder.transformer_blocks:
            torch.nn.init.zeros_(block.attn.o_proj.weight)
            torch.nn.init.zeros_(block.mlp.down_proj.weight)
        x = torch.rand(1, 3, 32, 32) * 2 - 1
        y = x.clone()
        y[:, :, 16:, :16] = -y[:, :, 16:, :16]  # the bottom-left quarter: region 2 of the 2 x 2 layout
        moved = (tok.encoder(x) - tok.encoder(y)).abs().amax(-1)[0]  # (K,)
        if pooled:
            assert moved[2] > 1e-2 and moved[[0, 1, 3]].max() < 1e-6
        else:
            assert moved.max() < 1e-6  # learned latent tokens alone: the image never reaches them


@pytest.mark.parametrize("width", [-3, 2.5, True])
def test_a_bad_latent_mlp_width_is_refused_by_name(width):
    """A negative width failed deep in torch ("Trying to create tensor with negative dimension")."""
    with pytest.raises(ValueError, match="TokenizerConfig.latent_mlp must be an integer >= 0"):
        TokenizerConfig(latent_mlp=width)


def test_vq_lookup_of_a_large_codebook_is_chunked_and_exact():
    """2^16 codes are looked up 256 rows at a time; every row still gets its nearest code by cosine."""
    vq = VQQuantizer(bits=16, dim=8)
    z = F.normalize(torch.randn(600, 16), dim=-1)
    whole = (z @ F.normalize(vq.codebook, dim=-1).T).argmax(-1)
    assert torch.equal(vq.lookup(z), whole)
    assert TokenizerConfig(quantizer="vq", codebook_size=16).codebook_size == 16



@pytest.mark.parametrize("fraction, hires_steps", [(0.25, [3, 7]), (1 / 3, [2, 5, 8]), (0.4, [2, 4, 7, 9]),
                                                   (0.7, [1, 2, 4, 5, 7, 8, 9]), (0, []), (1, list(range(10)))])
def test_hires_fraction_is_the_share_of_2x_steps(fraction, hires_steps):
    """It was every round(1/f)-th step: 0.7 and 0.9 made every step 2x, 0.4 half of them. f = 1/n keeps
    the old schedule (steps n-1, 2n-1, ...)."""
    from reasonrl.vision.binary.train_tokenizer import is_hires_step

    assert [s for s in range(10) if is_hires_step(s, fraction)] == hires_steps


def test_tokenizer_training_decodes_at_2x_on_the_scheduled_steps():
    from reasonrl.vision.binary.train_tokenizer import TokenizerJob, TokenizerTrainConfig
    from reasonrl.vision.gen.images import ImageConfig

    model = TokenizerConfig(**{**TINY, "patch_size": 8, "encoder_head_dim": 8, "decoder_head_dim": 8,
                               "axes_dims_rope": (2, 2, 4), "num_latent_tkns": 2})
    job = TokenizerJob(model, TokenizerTrainConfig(steps=3, images_per_step=1, eval_images=1, warmup_steps=0,
                                                   hires_fraction=0.7), ImageConfig())
    assert [job.train_step()["hires"] for _ in range(3)] == [0, 1, 1]  # every step was 2x
