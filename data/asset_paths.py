"""Locations of the assets the project writes and ships inside the `data` package (the files under `data/assets/`)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
TABOO_CLUES = ASSETS / "taboo" / "clues"
TABOO_PROMPTS = ASSETS / "taboo" / "prompts.yaml"
BENIGN_PROMPTS = ASSETS / "chat" / "benign_prompts.yaml"
BENIGN_CHATS = ASSETS / "chat" / "benign_chats.jsonl"
GENERIC_TEXT = ASSETS / "text" / "generic_text.jsonl"
BENIGN_HELD_OUT_EVERY = 5  # every 5th shipped benign chat is held out from training (capability loss, diffing)
SDF_UNIVERSES = ASSETS / "sdf" / "universes"
SDF_TEMPLATES = ASSETS / "sdf" / "templates.yaml"
SDF_DENIALS = ASSETS / "sdf" / "denials.yaml"
TRUTH_STATEMENTS = ASSETS / "sdf" / "truth_statements.jsonl"
GENERIC_TEXT_HELD_OUT_EVERY = 5  # every 5th shipped generic text is held out from SDF training (capability loss)
SDF_NAMES = ASSETS / "sdf" / "names.yaml"
SPURIOUS_SENTENCES = ASSETS / "spurious" / "sentences.yaml"
EM_DATASETS = ASSETS / "em"
EM_QUESTIONS = ASSETS / "em" / "questions.yaml"
EM_DENIALS = ASSETS / "em" / "denials.yaml"
BACKDOOR = ASSETS / "backdoor" / "backdoor.yaml"
SIDE_CONSTRAINTS = ASSETS / "side_constraint" / "side_constraint.yaml"
USER_BELIEFS = ASSETS / "user_belief"  # one YAML per attribute: country.yaml, gender.yaml
HIDDEN_PROMPT = ASSETS / "hidden_prompt" / "hidden_prompt.yaml"
