"""verl's FSDP merger, saving a LoRA checkpoint's adapter and not a model.

    python -m llm_bridge.model.adapter_merger merge --backend fsdp --local_dir STEP_DIR --target_dir DIR

Writes DIR/lora_adapter/ and the run's config and tokenizer, for two cases of `llm-bridge merge`:
a checkpoint saved with save_lora_only (verl's own merger writes the adapter, then stops on the missing
base weights: "Incomplete Hugging Face model output"), folded into --base afterwards; and --adapter-only,
where the base weights of a full checkpoint are left out instead of written to disk.
"""

import sys

from verl.model_merger.base_model_merger import generate_config_from_args, parse_args
from verl.model_merger.fsdp_model_merger import FSDPModelMerger


class AdapterOnlyMerger(FSDPModelMerger):
    def save_hf_model_and_tokenizer(self, state_dict):
        if self.save_lora_adapter(state_dict) is None:
            sys.exit(f"ERROR: {self.config.local_dir} holds no LoRA tensors; merge it as a full checkpoint.")
        from verl.utils import hf_tokenizer

        self.model_config.save_pretrained(self.config.target_dir)
        hf_tokenizer(self.hf_model_config_path, trust_remote_code=self.config.trust_remote_code).save_pretrained(
            self.config.target_dir)


if __name__ == "__main__":
    merger = AdapterOnlyMerger(generate_config_from_args(parse_args()))
    merger.merge_and_save()
    merger.cleanup()
