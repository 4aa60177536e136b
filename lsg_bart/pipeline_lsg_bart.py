"""The summarization pipeline of LSG-BART checkpoints.

transformers 5 removed its "summarization" pipeline; LSG checkpoints declare this one in their config
(`custom_pipelines`), so that `pipeline("summarization", model=path, trust_remote_code=True)` keeps working on every
supported transformers.
"""

from transformers import GenerationConfig, Pipeline

from .compat import pipeline_generate_kwargs, pipeline_tokenizer


class LSGBartSummarizationPipeline(Pipeline):
    """Summarise texts with an LSG-BART checkpoint: `[{"summary_text": ...}]` for each input text.

    Inputs longer than the model (`max_position_embeddings`, or the tokenizer's `model_max_length` if smaller) are
    truncated unless `truncation=False`. Generation arguments (`num_beams`, `max_new_tokens`, `length_penalty`, ...)
    go to `generate()`, at construction or at call time.
    """

    _pipeline_calls_generate = True
    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    default_max_new_tokens = 256
    _default_generation_config = GenerationConfig(max_new_tokens=default_max_new_tokens)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer = self.tokenizer or pipeline_tokenizer(self.model)

    def _sanitize_parameters(self, truncation=None, clean_up_tokenization_spaces=None, **generate_kwargs):
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        postprocess_params = {}
        if clean_up_tokenization_spaces is not None:
            postprocess_params["clean_up_tokenization_spaces"] = clean_up_tokenization_spaces
        return preprocess_params, generate_kwargs, postprocess_params

    def __call__(self, inputs, **kwargs):
        result = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(len(summaries) == 1 for summaries in result):
            return [summaries[0] for summaries in result]
        return result

    def preprocess(self, text, truncation=True):
        max_length = min(self.tokenizer.model_max_length, self.model.config.max_position_embeddings)
        return self.tokenizer(
            text, truncation=truncation, max_length=max_length, return_tensors="pt", return_token_type_ids=False
        )

    def _forward(self, model_inputs, **generate_kwargs):
        generate_kwargs = pipeline_generate_kwargs(self, generate_kwargs, self.default_max_new_tokens)
        return {"output_ids": self.model.generate(**model_inputs, **generate_kwargs)}

    def postprocess(self, model_outputs, clean_up_tokenization_spaces=False):
        return [
            {
                "summary_text": self.tokenizer.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=clean_up_tokenization_spaces
                )
            }
            for ids in model_outputs["output_ids"]
        ]


__all__ = ["LSGBartSummarizationPipeline"]
