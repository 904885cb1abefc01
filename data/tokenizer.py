"""Token ids <-> text, offline. Two kinds, named by meta['tokenizer']:
- 'char': one id per character of a small vocabulary stored in meta.pkl (reasoning,
  shakespeare_char);
- 'gpt2': GPT-2 BPE through tiktoken, built from BPE files on disk (tiktoken would otherwise try to
  download them).
Every vocabulary appends two special ids after the ordinary ones: end-of-sequence and the diffusion
[MASK]."""
import os

GPT2_BPE_HELP = (
    "GPT-2 BPE files are needed but were not found, and nothing is downloaded at run time. "
    "Provide either\n"
    "  a directory holding GPT-2's 'vocab.bpe' and 'encoder.json', or a 'gpt2.tiktoken' / "
    "'r50k_base.tiktoken' file,\n"
    "and point to it with --bpe_path=PATH or the environment variable NANORCD_GPT2_BPE.")


def char_meta(chars, **extra):
    """Vocabulary of a character-level dataset: chars, then <eos>, then <mask>."""
    itos = list(chars) + ['<eos>', '<mask>']
    return dict(tokenizer='char', itos=itos, stoi={c: i for i, c in enumerate(itos)},
                vocab_size=len(itos), eos_id=len(itos) - 2, mask_id=len(itos) - 1, **extra)


def load_gpt2_encoding(bpe_path=None):
    """tiktoken's GPT-2 encoding from local files; a clear error (never a network call) when they
    are missing."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks, load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str
    bpe_path = bpe_path or os.environ.get('NANORCD_GPT2_BPE', '')
    if os.path.isdir(bpe_path) and os.path.isfile(os.path.join(bpe_path, 'vocab.bpe')):
        ranks = data_gym_to_mergeable_bpe_ranks(os.path.join(bpe_path, 'vocab.bpe'),
                                                os.path.join(bpe_path, 'encoder.json'))
    elif os.path.isfile(bpe_path):
        ranks = load_tiktoken_bpe(bpe_path)
    else:
        raise SystemExit(f"error: {GPT2_BPE_HELP}\n  (looked at: {bpe_path or 'nothing given'})")
    eot = len(ranks)  # 50256 for the real GPT-2 files
    return tiktoken.Encoding(name='gpt2_local', pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={'<|endoftext|>': eot})


def gpt2_meta(enc, bpe_path):
    """Vocabulary of a BPE dataset: tiktoken's ids, <|endoftext|> as <eos>, one extra id for
    <mask>."""
    eos = enc.eot_token
    return dict(tokenizer='gpt2', bpe_path=os.path.abspath(bpe_path), vocab_size=eos + 2,
                eos_id=eos, mask_id=eos + 1)


class Tokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str, from a dataset's meta dict."""

    def __init__(self, meta, bpe_path=None):
        self.meta = meta
        if meta['tokenizer'] == 'char':
            self.stoi, self.itos = meta['stoi'], meta['itos']
        elif meta['tokenizer'] == 'gpt2':
            self.enc = load_gpt2_encoding(bpe_path or meta.get('bpe_path'))
        else:
            raise SystemExit(f"error: unknown tokenizer kind {meta['tokenizer']!r} in meta.pkl")

    def encode(self, text):
        if self.meta['tokenizer'] == 'gpt2':
            return self.enc.encode_ordinary(text)
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise SystemExit(f"error: characters {unknown} are not in this dataset's vocabulary")
        return [self.stoi[c] for c in text]

    def decode(self, ids):
        """Text of ids, stopping at the first <eos>; a [MASK] left in the output shows as '_'."""
        ids = list(ids)
        if self.meta['eos_id'] in ids:
            ids = ids[:ids.index(self.meta['eos_id'])]
        if self.meta['tokenizer'] == 'gpt2':
            underscore = self.enc.encode_ordinary('_')[0]
            return self.enc.decode([underscore if i == self.meta['mask_id'] else i for i in ids])
        return ''.join('_' if i == self.meta['mask_id'] else self.itos[i] for i in ids)
