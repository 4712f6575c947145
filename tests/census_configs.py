"""Tiny constructor arguments for every keras-hub backbone class the census builds.

One entry per class: keyword arguments of a model small enough to build,
expand and run in about a second. `hidden` and `layers` are the
`expand_model` request for its width and depth checks (a width the family
can express exactly if it can express any). Classes not listed here are in
`keras_lemon.support.CLASS_REFUSALS` (refused by class, with the reason).
"""

V = 50  # vocabulary
TEXT = dict(vocabulary_size=V, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32)
DECODER = dict(vocabulary_size=V, num_layers=2, num_query_heads=4, num_key_value_heads=2,
               hidden_dim=16, intermediate_dim=32)
IMAGE = (16, 16, 3)
# SmolLM3 takes every argument explicitly; its second layer uses no rotary
# embedding (NoPE), a per-layer entry that new blocks must copy.
SMOLLM3 = dict(vocabulary_size=V, hidden_dim=16, intermediate_dim=32, num_layers=2,
               num_attention_heads=4, num_key_value_heads=2, attention_bias=False,
               attention_dropout=0.0, rope_layer_enabled_list=[True, False],
               layer_types=["attention"] * 2, mlp_bias=False, layer_norm_epsilon=1e-6,
               max_position_embeddings=64, rope_theta=10000.0, partial_rotary_factor=1.0)

CONFIGS = {
    "AlbertBackbone": dict(vocabulary_size=V, num_layers=2, num_heads=2, embedding_dim=8,
                           hidden_dim=16, intermediate_dim=32, num_groups=1,
                           num_inner_repetitions=1, max_sequence_length=12),
    "BartBackbone": dict(TEXT, max_sequence_length=12),
    "BertBackbone": dict(TEXT, max_sequence_length=12),
    "BloomBackbone": dict(TEXT),
    "DebertaV3Backbone": dict(TEXT, max_sequence_length=12, bucket_size=4),
    "DeiTBackbone": dict(image_shape=IMAGE, patch_size=4, num_layers=2, num_heads=2,
                         hidden_dim=16, intermediate_dim=32),
    "DINOV2Backbone": dict(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2,
                           intermediate_dim=32, image_shape=(16, 16, 3)),
    "DINOV3Backbone": dict(patch_size=4, num_layers=2, hidden_dim=16, num_heads=2,
                           intermediate_dim=32, image_shape=(16, 16, 3)),
    "DistilBertBackbone": dict(TEXT, max_sequence_length=12),
    "ElectraBackbone": dict(vocab_size=V, num_layers=2, num_heads=2, hidden_dim=16,
                            embedding_dim=8, intermediate_dim=32, max_sequence_length=12),
    "ESMBackbone": dict(TEXT, max_sequence_length=12),
    "ESM2Backbone": dict(TEXT, max_sequence_length=12),
    "FalconBackbone": dict(vocabulary_size=V, num_layers=2, num_attention_heads=2,
                           hidden_dim=16, intermediate_dim=32),
    "FNetBackbone": dict(vocabulary_size=V, num_layers=2, hidden_dim=16, intermediate_dim=32,
                         max_sequence_length=12),
    "GemmaBackbone": dict(DECODER, head_dim=4),
    "Gemma3Backbone": dict(DECODER, head_dim=4, image_size=16),
    "GPT2Backbone": dict(TEXT, max_sequence_length=12),
    "GPTNeoXBackbone": dict(TEXT, max_sequence_length=12),
    "LlamaBackbone": dict(DECODER),
    "Llama3Backbone": dict(DECODER),
    "MistralBackbone": dict(DECODER),
    "OPTBackbone": dict(TEXT, max_sequence_length=12),
    "Phi3Backbone": dict(DECODER),
    "QwenBackbone": dict(DECODER),
    "Qwen2Backbone": dict(DECODER),
    "Qwen3Backbone": dict(DECODER, head_dim=4),
    "RobertaBackbone": dict(TEXT, max_sequence_length=12),
    "RoformerV2Backbone": dict(TEXT, head_size=8, max_wavelength=100),
    "SmolLMBackbone": SMOLLM3,  # the same class as SmolLM3Backbone
    "SmolLM3Backbone": SMOLLM3,
    "T5Backbone": dict(TEXT),
    "ViTBackbone": dict(image_shape=IMAGE, patch_size=4, num_layers=2, num_heads=2,
                        hidden_dim=16, mlp_dim=32),
    "WhisperBackbone": dict(TEXT, max_encoder_sequence_length=16,
                            max_decoder_sequence_length=12),
    "XLMRobertaBackbone": dict(TEXT, max_sequence_length=12),
    "XLNetBackbone": dict(TEXT),
    "VGGBackbone": dict(stackwise_num_repeats=[1, 1], stackwise_num_filters=[4, 8],
                        image_shape=IMAGE),
}
