"""Adding special tokens to a trained checkpoint (models/grow.py): the tokenizer learns them, the
embeddings and LM head grow, nothing the model already computed changes, and the result saves and
loads as a checkpoint."""

import pytest
import torch

from reasonrl.models import Tokenizer, load_model
from reasonrl.models.grow import add_special_tokens, resize_vocab
from reasonrl.models.loader import save_model
from reasonrl.models.model import CausalAttention
from reasonrl.models.tiny_vlm import LVR_TOKENS, make_vlm_checkpoint, make_vlm_tokenizer
from tests.models.vlm_common import CORPUS


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def checkpoint(tmp_path, request):
    tok = make_vlm_tokenizer(CORPUS, vocab_size=300)
    path = make_vlm_checkpoint(tmp_path / "base", tok, seed=1, std=0.1, tie_word_embeddings=request.param)
    return path, request.param


def logits(model, ids):
    t = len(ids)
    hidden = model.forward_embeds(model.embed_tokens(torch.tensor(ids)), torch.arange(t).expand(3, -1), CausalAttention(1, t))
    return model.compute_logits(hidden)


def test_tokens_are_added_and_the_old_vocabulary_is_untouched(checkpoint, tmp_path):
    path, tied = checkpoint
    model, tok = load_model(path), Tokenizer.from_dir(path)
    old_vocab, ids = model.config.vocab_size, tok.encode("What is in the picture?")
    with torch.no_grad():
        before = logits(model, ids)
    old_rows = model.embed_tokens.weight.detach().clone()
    new = add_special_tokens(model, tok, LVR_TOKENS)
    assert new == [tok.tok.token_to_id(t) for t in LVR_TOKENS] and min(new) == old_vocab and len(set(new)) == 3
    assert model.embed_tokens.weight.shape[0] == max(new) + 1 == model.config.vocab_size
    assert (model.lm_head.weight is model.embed_tokens.weight) == tied
    torch.testing.assert_close(model.embed_tokens.weight[new], old_rows.mean(0).expand(3, -1))  # new rows: the mean
    with torch.no_grad():
        after = logits(model, ids)
    torch.testing.assert_close(after[:, :old_vocab], before)  # the old tokens' logits are exactly as before
    assert tok.encode("<|lvr_start|><|lvr|><|lvr_end|>") == new  # special: never split
    assert add_special_tokens(model, tok, LVR_TOKENS) == new and model.config.vocab_size == max(new) + 1  # idempotent
    save_model(model, tmp_path / "grown", tok)
    again, tok2 = load_model(tmp_path / "grown"), Tokenizer.from_dir(tmp_path / "grown")
    assert [tok2.tok.token_to_id(t) for t in LVR_TOKENS] == new
    torch.testing.assert_close(again.embed_tokens.weight, model.embed_tokens.weight)
    with torch.no_grad():
        torch.testing.assert_close(logits(again, ids), after)


def test_resize_only_grows(checkpoint):
    model = load_model(checkpoint[0])
    with pytest.raises(ValueError, match="only grows"):
        resize_vocab(model, model.config.vocab_size - 1)
