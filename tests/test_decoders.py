"""Decoder LLMs (issue 14): keras-hub Llama, Llama3, Mistral, Qwen (Qwen2),
Qwen3, Phi-3, SmolLM3, GPT-2, OPT, GPT-NeoX, Gemma, Gemma 2 and Gemma 3.

Llama: pre-norm with RMSNorms, so the stream grows zero-padded and any width
is exact; rotary grouped-query attention keeps its head size and its groups
(query and KV heads copied together). GPT-2 and OPT: pre-LN LayerNorms with
epsilons fixed in code (whole multiples), tied embeddings (the factor of the
copies folded into the final LayerNorm), KV-cached attention. Every weight randomized, RMSNorm
scales included. Checked: hidden states / logits at `TOLERANCE`, and greedy
`generate()` through the KV cache token for token.
"""

import keras
import keras_hub
import numpy as np
import pytest
from census import check_request
from conftest import TOLERANCE
from conftest import randomize
from conftest import relative_error

import keras_lemon

CONFIG = dict(vocabulary_size=50, num_layers=2, num_query_heads=4, num_key_value_heads=2,
              hidden_dim=16, intermediate_dim=32)
#: Pre-LN LayerNorm decoders: GPT-2 and OPT (keras_hub.layers, learned
#: positions, CachedMultiHeadAttention, tied embeddings) and GPT-NeoX.
LAYER_NORM_DECODERS = {
    "GPT2Backbone": dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
                         intermediate_dim=32, max_sequence_length=16),
    "OPTBackbone": dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
                        intermediate_dim=32, max_sequence_length=16),
    # Fused q/k/v, partial rotary, parallel residual (x + attention + MLP).
    "GPTNeoXBackbone": dict(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
                            intermediate_dim=32, max_sequence_length=16),
}
CASES = {
    "width_not_a_multiple": dict(hidden=24),
    "depth_interleave": dict(layers=3),
    "width_and_depth_stack": dict(hidden=40, layers=5, placement="stack"),
    "width_x2_and_depth_zero_blocks": dict(hidden=32, layers=4, method="zero_blocks"),
}
FAMILIES = [("LlamaBackbone", "LlamaCausalLM"), ("Llama3Backbone", "Llama3CausalLM"),
            ("MistralBackbone", "MistralCausalLM"), ("QwenBackbone", "QwenCausalLM"),
            ("Qwen3Backbone", "Qwen3CausalLM"), ("Phi3Backbone", "Phi3CausalLM")]
#: Per-family arguments: Qwen3 takes its head size explicitly.
EXTRA = {"Qwen3Backbone": dict(head_dim=4)}
#: Families whose config has no tie_word_embeddings (Mistral, Phi-3: untied).
UNTIED_ONLY = {"MistralBackbone", "Phi3Backbone"}


def backbone(name, tied=False, **overrides):
    tie = {} if name in UNTIED_ONLY else {"tie_word_embeddings": tied}
    return randomize(getattr(keras_hub.models, name)(
        **{**CONFIG, **EXTRA.get(name, {}), **tie, **overrides}))


#: (family, tied) pairs: Mistral has no tie_word_embeddings argument.
TIES = [(b, t) for b, _ in FAMILIES for t in (False, True) if not (t and b in UNTIED_ONLY)]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("name,tied", TIES)
def test_backbones_lossless(name, tied, case):
    status, error = check_request(backbone(name, tied), CASES[case])
    assert status == "yes", error


def test_qwen3_query_key_norms_keep_their_epsilon():
    # They normalize over the head size, which does not grow; in keras-hub
    # 0.32 they use the attention layer's own epsilon (1e-5), not the
    # config's layer_norm_epsilon, so a non-multiple width stays exact.
    big = keras_lemon.expand_model(backbone("Qwen3Backbone"), hidden=24, seed=0)
    attention = big.get_layer("transformer_layer_0")._self_attention_layer
    assert attention._query_dense_layer_norm.epsilon == 1e-5
    assert np.isclose(big.layer_norm_epsilon, 1e-6 * 16 / 24)


def _tokens(seed=0, length=7):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, 50, (2, 12)).astype("int32")
    padding_mask = np.zeros((2, 12), "int32")
    padding_mask[0, :length], padding_mask[1, : length - 2] = 1, 1
    return {"token_ids": token_ids * padding_mask, "padding_mask": padding_mask}


def greedy_tokens(model, prompt):
    """Greedy decoding of a preprocessed batch through the KV cache.

    Calls the task's generate function itself, as `generate()` does batch by
    batch (`Gemma3CausalLM.generate` without a preprocessor fails in
    keras-hub 0.32 while it joins its outputs: it concatenates `images=None`).
    """
    model.compile(sampler="greedy")
    generate = model.make_generate_function()
    inputs = {k: keras.ops.convert_to_tensor(v) for k, v in prompt.items()}
    return keras.ops.convert_to_numpy(generate(inputs, stop_token_ids=None)["token_ids"])


def assert_same_logits_and_generation(small, big):
    """Logits at `TOLERANCE`, and greedy decoding through the KV cache (shaped
    by the KV heads and the head size) token for token."""
    inputs = _tokens()
    error = relative_error(keras.ops.convert_to_numpy(small(inputs)).astype("float64"),
                           keras.ops.convert_to_numpy(big(inputs)).astype("float64"))
    assert error <= TOLERANCE, error
    prompt = _tokens(seed=1, length=4)
    expected, actual = greedy_tokens(small, prompt), greedy_tokens(big, prompt)
    np.testing.assert_array_equal(expected, actual)
    assert (expected != prompt["token_ids"]).any()  # it generated something


#: CausalLM requests, alternated over the (family, tied) pairs: each family
#: meets one (generation compiles two models per case; the backbone test
#: above covers every request on every family).
CAUSAL_LM_REQUESTS = [dict(hidden=24, layers=3), dict(hidden=32, layers=4, placement="stack")]


@pytest.mark.parametrize("backbone_name,tied,request_", [
    (name, tied, CAUSAL_LM_REQUESTS[i % 2]) for i, (name, tied) in enumerate(TIES)])
def test_causal_lm_logits_and_greedy_generation(backbone_name, tied, request_):
    task_class = getattr(keras_hub.models, dict(FAMILIES)[backbone_name])
    small = randomize(task_class(backbone(backbone_name, tied)), 1)
    before = [keras.ops.convert_to_numpy(v).copy() for v in small.weights]
    big = keras_lemon.expand_model(small, seed=0, **request_)
    assert type(big) is task_class
    assert big.backbone.token_embedding.tie_weights == small.backbone.token_embedding.tie_weights
    assert_same_logits_and_generation(small, big)
    after = [keras.ops.convert_to_numpy(v) for v in small.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))


def test_query_heads_must_keep_their_groups():
    # 4 query heads share 2 KV heads (2 per group); 20 wide -> 5 heads of 4.
    with pytest.raises(ValueError, match="LlamaBackbone.*2 per group.*multiple of 2"):
        keras_lemon.expand_model(backbone("LlamaBackbone"), hidden=20)


def test_rotary_head_size_must_stay():
    with pytest.raises(ValueError, match="LlamaBackbone.*rotary.*head size"):
        keras_lemon.expand_model(backbone("LlamaBackbone"), hidden=32, heads=4)


def test_rms_norm_epsilon_scaled_for_a_non_multiple_width():
    big = keras_lemon.expand_model(backbone("LlamaBackbone"), hidden=24, seed=0)
    assert np.isclose(big.layer_norm_epsilon, 1e-6 * 16 / 24)
    assert (big.num_query_heads, big.num_key_value_heads) == (6, 3)


@pytest.mark.parametrize("request_", [dict(hidden=32), dict(layers=3),
                                      dict(hidden=48, layers=5, placement="stack")])
@pytest.mark.parametrize("name", sorted(LAYER_NORM_DECODERS))
def test_layer_norm_decoders_and_their_causal_lm(name, request_):
    config = LAYER_NORM_DECODERS[name]
    status, error = check_request(randomize(getattr(keras_hub.models, name)(**config)), request_)
    assert status == "yes", error
    task_class = getattr(keras_hub.models, name.replace("Backbone", "CausalLM"))
    small = randomize(task_class(getattr(keras_hub.models, name)(**config)), 1)
    assert_same_logits_and_generation(small, keras_lemon.expand_model(small, seed=0, **request_))


def test_new_blocks_at_chosen_positions():
    """LLaMA-Pro style: a block after blocks 0 and 1; layers follows from positions."""
    small = randomize(keras_hub.models.LlamaCausalLM(backbone("LlamaBackbone")), 1)
    big = keras_lemon.expand_model(small, positions=[0, 1], hidden=24, seed=0)
    assert big.backbone.num_layers == 4
    plan = keras_lemon.expansion_plan(small, positions=[1, 1])
    assert plan.blocks == ["0", "1", "new<-1", "new<-1"]
    assert_same_logits_and_generation(small, big)
    with pytest.raises(ValueError, match="LlamaBackbone|positions"):
        keras_lemon.expand_model(small, positions=[2])


def test_smollm3_per_layer_rotary_pattern_follows_the_copied_blocks():
    """SmolLM3 leaves out rotary embeddings in some layers (NoPE), by a per-layer
    config list: a new block takes its template's entry."""
    from census_configs import SMOLLM3

    small = randomize(keras_hub.models.SmolLM3CausalLM(
        randomize(keras_hub.models.SmolLM3Backbone(**SMOLLM3))), 1)
    for request_ in (dict(positions=[1], hidden=24), dict(layers=4, placement="stack")):
        big = keras_lemon.expand_model(small, seed=0, **request_)
        expected = [SMOLLM3["rope_layer_enabled_list"][int(s)] for s in [
            b.split("<-")[-1] for b in keras_lemon.expansion_plan(small, **request_).blocks]]
        assert big.backbone.get_config()["rope_layer_enabled_list"] == expected
        assert_same_logits_and_generation(small, big)


#: Gemma (plain), Gemma 2 (a GemmaBackbone config: branch-output norms, soft-caps,
#: sliding-window layers alternating by index, queries scaled by
#: 1/sqrt(hidden // heads) with a head size of its own) and Gemma 3 text
#: (five local layers and one global, q/k norms).
GEMMAS = {
    "gemma": ("GemmaBackbone", dict(CONFIG, head_dim=4)),
    "gemma2": ("GemmaBackbone", dict(
        CONFIG, num_layers=4, head_dim=8, query_head_dim_normalize=False,
        use_post_attention_norm=True, use_post_ffw_norm=True, attention_logit_soft_cap=5.0,
        final_logit_soft_cap=3.0, use_sliding_window_attention=True, sliding_window_size=3)),
    "gemma3": ("Gemma3Backbone", dict(
        CONFIG, num_layers=6, head_dim=8, image_size=16, query_head_dim_normalize=False,
        use_post_attention_norm=True, use_post_ffw_norm=True,
        use_sliding_window_attention=True, sliding_window_size=3)),
}
#: One period of each layer pattern (new blocks come in whole periods).
PERIODS = {"gemma": 1, "gemma2": 2, "gemma3": 6}


def gemma(variant):
    name, config = GEMMAS[variant]
    return randomize(getattr(keras_hub.models, name)(**config))


@pytest.mark.parametrize("variant", sorted(GEMMAS))
def test_gemma_backbones_lossless(variant):
    layers = GEMMAS[variant][1]["num_layers"]
    for request_ in (dict(hidden=24), dict(hidden=32), dict(layers=layers + PERIODS[variant]),
                     dict(hidden=40, layers=layers + 2 * PERIODS[variant], placement="stack")):
        status, error = check_request(gemma(variant), request_)
        assert status == "yes", (request_, error)


@pytest.mark.parametrize("variant", sorted(GEMMAS))
def test_gemma_causal_lm_logits_and_greedy_generation(variant):
    name, config = GEMMAS[variant]
    task_class = getattr(keras_hub.models, name.replace("Backbone", "CausalLM"))
    small = randomize(task_class(backbone=gemma(variant), preprocessor=None), 1)
    big = keras_lemon.expand_model(small, hidden=24, layers=config["num_layers"] + PERIODS[variant],
                                   seed=0)
    assert big.backbone.hidden_dim == 24 and big.backbone.intermediate_dim == 48
    assert_same_logits_and_generation(small, big)


def test_gemma_layer_patterns_are_kept_by_whole_periods():
    """Gemma 2 alternates sliding-window and global layers by index: each block
    keeps its kind, and a new block has its template's."""
    small = gemma("gemma2")
    plan = keras_lemon.expansion_plan(small, layers=8)
    assert plan.blocks == ["0", "1", "new<-0", "new<-1", "2", "3", "new<-2", "new<-3"]
    big = keras_lemon.expand_model(small, layers=8, seed=0)
    templates = [int(b.split("<-")[-1]) for b in plan.blocks]
    kinds = [layer.attention.use_sliding_window_attention for layer in big.transformer_layers]
    assert kinds == [small.transformer_layers[t].attention.use_sliding_window_attention
                     for t in templates]
    with pytest.raises(ValueError, match="GemmaBackbone.*whole periods.*multiple of 2"):
        keras_lemon.expand_model(small, layers=5)
    with pytest.raises(ValueError, match="GemmaBackbone.*pattern.*index 2"):
        keras_lemon.expand_model(small, positions=[1, 3])
    with pytest.raises(ValueError, match="Gemma3Backbone.*multiple of 6"):
        keras_lemon.expand_model(gemma("gemma3"), layers=9)


def test_gemma_non_multiple_width_scales_the_stream_not_the_epsilons():
    # keras-hub builds Gemma's block norms with a fixed epsilon (not the
    # config's): the zero-padded stream is scaled by 1/eta instead.
    small = gemma("gemma2")
    big = keras_lemon.expand_model(small, hidden=24, seed=0)
    assert big.layer_norm_epsilon == small.layer_norm_epsilon
    assert big.transformer_layers[0].pre_attention_norm.epsilon == 1e-6
    eta = np.sqrt(16 / 24)
    table = keras.ops.convert_to_numpy(big.token_embedding.embeddings)
    source = keras.ops.convert_to_numpy(small.token_embedding.embeddings)
    # sqrt(16 / 24) for the new sqrt(hidden_dim), 1 / eta for the stream.
    np.testing.assert_allclose(table[:, :16], source * np.sqrt(16 / 24) / eta, rtol=1e-6)
    np.testing.assert_array_equal(table[:, 16:], 0)


def test_gemma3_with_a_vision_encoder_is_refused():
    encoder = keras_hub.models.Gemma3VisionEncoder(
        image_size=16, patch_size=4, num_heads=2, hidden_dim=8, num_layers=1,
        intermediate_dim=16, output_dim=16, pool_size=2)
    name, config = GEMMAS["gemma3"]
    model = keras_hub.models.Gemma3Backbone(**{**config, "vision_encoder": encoder})
    with pytest.raises(ValueError, match="Gemma3Backbone.*vision encoder"):
        keras_lemon.expand_model(model, hidden=32)
