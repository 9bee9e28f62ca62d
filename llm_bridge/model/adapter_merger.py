"""verl's FSDP merger for a checkpoint saved with save_lora_only: the adapter, not a model.

    python -m llm_bridge.model.adapter_merger merge --backend fsdp --local_dir STEP_DIR --target_dir DIR

verl's merger gathers the shards and writes lora_adapter/, then stops: it finds no base weights to save
(verl 0.9.1 raises "Incomplete Hugging Face model output"). This runs the same merger, saving what such a
checkpoint holds: DIR/lora_adapter/ and the run's config and tokenizer. `llm-bridge merge` folds it into --base.
"""

import sys

from verl.model_merger.base_model_merger import generate_config_from_args, parse_args
from verl.model_merger.fsdp_model_merger import FSDPModelMerger


class AdapterOnlyMerger(FSDPModelMerger):
    def save_hf_model_and_tokenizer(self, state_dict):
        if self.save_lora_adapter(state_dict) is None:
            sys.exit(f"ERROR: {self.config.local_dir} holds no LoRA tensors; merge it as a full checkpoint.")
        if state_dict:  # save_lora_adapter took the adapter out; anything left is a base weight
            sys.exit(f"ERROR: {self.config.local_dir} holds base weights too ({next(iter(state_dict))}); "
                     "merge it as a full checkpoint.")
        from verl.utils import hf_tokenizer

        self.model_config.save_pretrained(self.config.target_dir)
        hf_tokenizer(self.hf_model_config_path, trust_remote_code=self.config.trust_remote_code).save_pretrained(
            self.config.target_dir)


if __name__ == "__main__":
    merger = AdapterOnlyMerger(generate_config_from_args(parse_args()))
    merger.merge_and_save()
    merger.cleanup()
