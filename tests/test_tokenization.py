import pytest

from pixellm.constants import seg_token_strings
from pixellm.tokenization import CodebookTokenError, add_codebook_tokens, build_tiny_tokenizer


def test_codebook_tokens_get_distinct_single_ids():
    tok = build_tiny_tokenizer()
    before = len(tok)
    ids = add_codebook_tokens(tok, seg_token_strings(2, 3))
    assert len(set(ids)) == 6 and all(i >= before for i in ids)
    text = f"the cup {''.join(seg_token_strings(2, 3))} on the left"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert [i for i in enc if i in ids] == ids
    assert tok.decode(enc) == text


def test_a_tokenizer_that_splits_codebook_tokens_is_refused():
    tok = build_tiny_tokenizer()
    tok.add_special_tokens = lambda *a, **k: 0  # a tokenizer that silently ignores added tokens
    with pytest.raises(CodebookTokenError, match=r"encodes to \d+ ids"):
        add_codebook_tokens(tok, seg_token_strings(2, 3))


def test_tiny_tokenizer_round_trips_through_save_pretrained(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tiny_tokenizer()
    ids = add_codebook_tokens(tok, seg_token_strings(2, 3))
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert [again.convert_tokens_to_ids(t) for t in seg_token_strings(2, 3)] == ids
    assert again("<image>", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("<image>")]
