"""Text prompts for the synthetic images: the paper's, the authors' richer
word lists (docs/reference.md, "Synthetic data") or a template.

Where a prompt has a choice (breed, location, age), image ``i`` of group ``g``
draws it from a generator seeded by ``(seed, g, i)``: reproducible and
independent of generation order.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence

import numpy as np

from ffr_jax.data.types import DatasetSpec

PROMPT_SETS = ("paper", "rich")

# --- SpuCo Animals ---------------------------------------------------------
# Breeds follow the SpuCo paper's sources: landbirds and waterbirds are species
# of CUB-200 (as in Waterbirds), dogs are Stanford Dogs breeds split by size.

LANDBIRDS = (
    "American crow", "American goldfinch", "Baltimore oriole", "barn swallow",
    "blue jay", "bobolink", "Brewer's blackbird", "brown creeper",
    "brown thrasher", "cactus wren", "cardinal", "cedar waxwing",
    "chipping sparrow", "clay-colored sparrow", "downy woodpecker",
    "eastern towhee", "evening grosbeak", "field sparrow", "fish crow",
    "gray catbird", "great crested flycatcher", "house sparrow", "house wren",
    "indigo bunting", "least flycatcher", "mockingbird", "northern flicker",
    "painted bunting", "pileated woodpecker", "red-headed woodpecker",
    "red-winged blackbird", "rose-breasted grosbeak", "ruby-throated hummingbird",
    "scarlet tanager", "song sparrow", "summer tanager", "tree swallow",
    "white-breasted nuthatch", "yellow warbler", "yellow-headed blackbird",
)

WATERBIRDS = (
    "black-footed albatross", "Laysan albatross", "sooty albatross",
    "Brandt's cormorant", "pelagic cormorant", "red-faced cormorant",
    "frigatebird", "northern fulmar", "California gull", "glaucous-winged gull",
    "Heermann's gull", "herring gull", "ring-billed gull", "western gull",
    "horned puffin", "mallard", "hooded merganser", "red-breasted merganser",
    "Pacific loon", "brown pelican", "white pelican", "eared grebe",
    "horned grebe", "pied-billed grebe", "western grebe", "Arctic tern",
    "black tern", "Caspian tern", "common tern", "elegant tern", "Forster's tern",
    "least tern", "crested auklet", "rhinoceros auklet", "red-legged kittiwake",
)

SMALL_DOGS = (
    "Chihuahua", "Japanese spaniel", "Maltese dog", "Pekinese", "Shih-Tzu",
    "Blenheim spaniel", "papillon", "toy terrier", "Norfolk terrier",
    "Norwich terrier", "Yorkshire terrier", "wire-haired fox terrier",
    "Lakeland terrier", "Sealyham terrier", "cairn terrier", "Australian terrier",
    "Dandie Dinmont terrier", "Boston terrier", "miniature schnauzer",
    "Scotch terrier", "silky terrier", "West Highland white terrier", "Lhasa apso",
    "schipperke", "miniature pinscher", "affenpinscher", "pug", "Pomeranian",
    "Brabancon griffon", "toy poodle", "miniature poodle", "Pembroke corgi",
    "Cardigan corgi", "Border terrier", "Bedlington terrier", "French bulldog",
    "Italian greyhound", "basenji", "Shetland sheepdog", "dachshund",
)

BIG_DOGS = (
    "Rhodesian ridgeback", "Afghan hound", "basset hound", "beagle", "bloodhound",
    "bluetick coonhound", "black-and-tan coonhound", "Walker hound",
    "English foxhound", "redbone coonhound", "borzoi", "Irish wolfhound",
    "whippet", "Ibizan hound", "Norwegian elkhound", "otterhound", "Saluki",
    "Scottish deerhound", "Weimaraner", "Staffordshire bull terrier",
    "American Staffordshire terrier", "Kerry blue terrier", "Irish terrier",
    "Airedale terrier", "giant schnauzer", "standard schnauzer",
    "soft-coated wheaten terrier", "flat-coated retriever",
    "curly-coated retriever", "golden retriever", "Labrador retriever",
    "Chesapeake Bay retriever", "German short-haired pointer", "vizsla",
    "English setter", "Irish setter", "Gordon setter", "Brittany spaniel",
    "clumber spaniel", "English springer spaniel", "Welsh springer spaniel",
    "cocker spaniel", "Sussex spaniel", "Irish water spaniel", "kuvasz",
    "groenendael", "Belgian malinois", "briard", "Australian kelpie", "komondor",
    "Old English sheepdog", "collie", "Border collie", "Bouvier des Flandres",
    "Rottweiler", "German shepherd", "Doberman", "Greater Swiss Mountain dog",
    "Bernese mountain dog", "Appenzeller", "Entlebucher", "boxer", "bullmastiff",
    "Tibetan mastiff", "Great Dane", "Saint Bernard", "Eskimo dog",
    "Alaskan malamute", "Siberian husky", "Leonberger", "Newfoundland",
    "Great Pyrenees", "Samoyed", "chow chow", "keeshond", "standard poodle",
    "Dalmatian",
)

LAND_LOCATIONS = (
    "a forest", "a bamboo forest", "a meadow", "a grassy field", "a desert",
    "a mountain trail", "a wheat field", "a pine forest", "a garden",
    "a rocky canyon", "a savanna", "an autumn woodland", "a vineyard",
    "a snowy forest", "a rainforest",
)

WATER_LOCATIONS = (
    "the ocean", "a lake", "a river", "a pond", "a beach", "a harbor",
    "a marsh", "a waterfall", "a rocky coast", "a lagoon", "a swamp",
    "a fjord", "a mangrove", "open sea waves", "a reservoir",
)

INDOOR_LOCATIONS = (
    "a kitchen", "a living room", "a bedroom", "a bathroom", "an office",
    "a hallway", "a dining room", "a laundry room", "a pet shop",
    "a veterinary clinic", "a library", "a cafe", "a garage", "a basement",
    "a classroom", "a hotel lobby", "a staircase", "a nursery",
)

OUTDOOR_LOCATIONS = (
    "a park", "a beach", "a backyard", "a forest trail", "a snowy field",
    "a city street", "a meadow", "a mountain path", "a farm", "a garden",
    "a playground", "a sidewalk", "a lake shore", "a hiking trail",
    "a desert road", "a parking lot", "a campsite", "a dog park",
)

SPUCO_RICH = {
    "classes": {"landbird": LANDBIRDS, "waterbird": WATERBIRDS,
                "small dog": SMALL_DOGS, "big dog": BIG_DOGS},
    "biases": {"land": LAND_LOCATIONS, "water": WATER_LOCATIONS,
               "indoors": INDOOR_LOCATIONS, "outdoors": OUTDOOR_LOCATIONS},
    "template": "a photo of {a_class} in {bias}",
}

# --- CelebA-HQ: y = Smiling, b = Male ----------------------------------------
CELEBA_RICH = {
    "classes": {"not smiling": ("with serious face", "with straight face"),
                "smiling": ("smiling",)},
    "biases": {"female": ("female",), "male": ("male",)},
    "template": "a headshot of {bias} celebrity {class}",
}

# --- UTKFace: y = gender, b = age (old: 20-50, young) ------------------------
UTK_RICH = {
    "classes": {"male": ("male",), "female": ("female",)},
    "biases": {
        "young": ("baby", "aged three years old", "aged four years old",
                  "aged five years old"),
        "old": ("in their twenties", "in their thirties", "in their forties",
                "in their fifties"),
    },
    "template": "a headshot of a human {class} {bias}",
}

# --- Waterbirds: y = bird type, b = the Places background --------------------
WATERBIRDS_RICH = {
    "classes": {"landbird": LANDBIRDS, "waterbird": WATERBIRDS},
    "biases": {"land": ("a bamboo forest", "a broadleaf forest"),
               "water": ("the ocean", "a natural lake")},
    "template": "a photo of {a_class} in {bias}",
}

# --- CelebA: y = Blond_Hair, b = Male ---------------------------------------
CELEBA_BLOND_RICH = {
    "classes": {"not blond": ("with black hair", "with brown hair",
                              "with gray hair"),
                "blond": ("with blond hair",)},
    "biases": {"female": ("female",), "male": ("male",)},
    "template": "a headshot of {bias} celebrity {class}",
}

RICH = {"spuco_animals": SPUCO_RICH, "celeba_hq": CELEBA_RICH,
        "utk_face": UTK_RICH, "waterbirds": WATERBIRDS_RICH,
        "celeba": CELEBA_BLOND_RICH}
TEMPLATE_FIELDS = ("class", "a_class", "bias")

PromptFn = Callable[[int, int], str]


def _article(phrase: str) -> str:
  """``"a beagle"`` / ``"an Afghan hound"``."""
  return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _choose(options: Sequence[str], rng: np.random.Generator) -> str:
  return options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]


def paper_prompt(spec: DatasetSpec, y: int, b: int) -> str:
  """The paper's template: ``"A photo of {bias} {class}"``."""
  return f"A photo of {spec.bias_names[b]} {spec.class_names[y]}"


def _rich_words(spec: DatasetSpec) -> dict:
  if spec.name not in RICH:
    raise ValueError(
        f"No 'rich' prompt set for dataset {spec.name!r}; rich sets exist for "
        f"{sorted(RICH)}. Use --config.generate.prompts=paper.")
  words = RICH[spec.name]
  missing = ([c for c in spec.class_names if c not in words["classes"]]
             + [b for b in spec.bias_names if b not in words["biases"]])
  if missing:
    raise ValueError(
        f"The 'rich' prompts of {spec.name} do not cover {missing}; the spec's "
        f"classes are {spec.class_names}, biases {spec.bias_names}.")
  return words


def _template_words(spec: DatasetSpec, template: str) -> dict:
  """A word set with one option per name: one prompt per group."""
  fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
  if (fields - set(TEMPLATE_FIELDS) or "bias" not in fields
      or not fields & {"class", "a_class"}):
    raise ValueError(
        f"Prompt template {template!r} must use {{bias}} and {{class}} (or "
        f"{{a_class}}) and no other field; found {sorted(fields)}.")
  return {"classes": {c: (c.replace("_", " "),) for c in spec.class_names},
          "biases": {b: (b.replace("_", " "),) for b in spec.bias_names},
          "template": template}


def make_prompt_fn(spec: DatasetSpec, prompt_set: str = "paper", seed: int = 0
                   ) -> PromptFn:
  """``prompt_fn(g, index) -> str`` for group ``spec.groups[g]``; ``prompt_set``
  is ``"paper"``, ``"rich"`` or a template such as ``"a photo of a {class} in {bias}"``
  (``{a_class}``: with its article; underscores in the spec's names read as spaces)."""
  if prompt_set == "paper":
    return lambda g, i: paper_prompt(spec, *spec.groups[g])
  if "{" in prompt_set:
    words = _template_words(spec, prompt_set)
  elif prompt_set == "rich":
    words = _rich_words(spec)
  else:
    raise ValueError(
        f"Unknown prompt set {prompt_set!r}; expected one of {PROMPT_SETS} or "
        "a template with {class} and {bias}.")

  def prompt_fn(g: int, index: int) -> str:
    y, b = spec.groups[g]
    rng = np.random.default_rng([int(seed), int(g), int(index)])
    cls = _choose(words["classes"][spec.class_names[y]], rng)
    bias = _choose(words["biases"][spec.bias_names[b]], rng)
    return words["template"].format(**{"class": cls, "a_class": _article(cls),
                                       "bias": bias})
  return prompt_fn

