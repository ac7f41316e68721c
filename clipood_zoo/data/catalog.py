"""What each public dataset *is*: its domains, its class list in label order, and where that comes from.

Written once here so that the registry (model names, class embeddings), the converters and the
evaluation protocols agree on one label order. Class lists follow DomainBed's
(facebookresearch/DomainBed, ``domainbed/datasets.py``), which reads every domain with torchvision's
``ImageFolder``: labels are the *sorted* folder names, capitals first. Domain folder names are the
ones the datasets are distributed with; registry names use the short ``slug``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from ..errors import ConfigError


@dataclass(frozen=True)
class DomainSpec:
    slug: str  # the name used in registry names, e.g. 'realworld'
    folder: str  # the folder name in the distributed dataset, e.g. 'Real World'


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    domains: Tuple[DomainSpec, ...]
    class_folders: Tuple[str, ...]  # label order: sorted folder names, as ImageFolder assigns them
    source: str

    @property
    def class_names(self) -> Tuple[str, ...]:
        """Human-readable names for prompts: folder names with '_' and '-' turned into spaces."""
        return tuple(prettify_class_name(c) for c in self.class_folders)

    @property
    def num_classes(self) -> int:
        return len(self.class_folders)

    def domain(self, slug_or_folder: str) -> DomainSpec:
        for d in self.domains:
            if slug_or_folder in (d.slug, d.folder):
                return d
        known = ", ".join(f"{d.slug} ({d.folder})" for d in self.domains)
        raise ConfigError(f"{self.name} has no domain {slug_or_folder!r}; its domains are: {known}")


def prettify_class_name(folder: str) -> str:
    return folder.replace("_", " ").replace("-", " ").strip()


def class_key(name: str) -> str:
    """A class name as folders and models both spell it: 'Alarm_Clock' and 'alarm clock' are one class."""
    return prettify_class_name(name).lower()


def _domains(*pairs: Tuple[str, str]) -> Tuple[DomainSpec, ...]:
    return tuple(DomainSpec(slug, folder) for slug, folder in pairs)


PACS = DatasetSpec(
    name="pacs",
    domains=_domains(("art", "art_painting"), ("cartoon", "cartoon"), ("photo", "photo"), ("sketch", "sketch")),
    class_folders=("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
    source="Li et al., Deeper, Broader and Artier Domain Generalization, ICCV 2017; DomainBed PACS",
)

VLCS = DatasetSpec(
    name="vlcs",
    domains=_domains(("caltech101", "Caltech101"), ("labelme", "LabelMe"), ("sun09", "SUN09"), ("voc2007", "VOC2007")),
    class_folders=("bird", "car", "chair", "dog", "person"),
    source="Fang et al., Unbiased Metric Learning, ICCV 2013; DomainBed VLCS",
)

OFFICEHOME = DatasetSpec(
    name="officehome",
    domains=_domains(("art", "Art"), ("clipart", "Clipart"), ("product", "Product"), ("realworld", "Real World")),
    class_folders=(
        "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar",
        "Candles", "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser",
        "Exit_Sign", "Fan", "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer",
        "Helmet", "Kettle", "Keyboard", "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse",
        "Mug", "Notebook", "Oven", "Pan", "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin",
        "Radio", "Refrigerator", "Ruler", "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda",
        "Speaker", "Spoon", "TV", "Table", "Telephone", "ToothBrush", "Toys", "Trash_Can", "Webcam",
    ),
    source="Venkateswara et al., Deep Hashing Network for Unsupervised Domain Adaptation, CVPR 2017; DomainBed OfficeHome",
)

TERRAINCOGNITA = DatasetSpec(
    name="terraincognita",
    domains=_domains(("l100", "location_100"), ("l38", "location_38"), ("l43", "location_43"), ("l46", "location_46")),
    class_folders=("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel"),
    source="Beery et al., Recognition in Terra Incognita, ECCV 2018; DomainBed TerraIncognita",
)

DOMAINNET = DatasetSpec(
    name="domainnet",
    domains=_domains(
        ("clipart", "clipart"), ("infograph", "infograph"), ("painting", "painting"),
        ("quickdraw", "quickdraw"), ("real", "real"), ("sketch", "sketch"),
    ),
    class_folders=(
        "The_Eiffel_Tower", "The_Great_Wall_of_China", "The_Mona_Lisa", "aircraft_carrier", "airplane",
        "alarm_clock", "ambulance", "angel", "animal_migration", "ant", "anvil", "apple", "arm", "asparagus",
        "axe", "backpack", "banana", "bandage", "barn", "baseball", "baseball_bat", "basket", "basketball",
        "bat", "bathtub", "beach", "bear", "beard", "bed", "bee", "belt", "bench", "bicycle", "binoculars",
        "bird", "birthday_cake", "blackberry", "blueberry", "book", "boomerang", "bottlecap", "bowtie",
        "bracelet", "brain", "bread", "bridge", "broccoli", "broom", "bucket", "bulldozer", "bus", "bush",
        "butterfly", "cactus", "cake", "calculator", "calendar", "camel", "camera", "camouflage", "campfire",
        "candle", "cannon", "canoe", "car", "carrot", "castle", "cat", "ceiling_fan", "cell_phone", "cello",
        "chair", "chandelier", "church", "circle", "clarinet", "clock", "cloud", "coffee_cup", "compass",
        "computer", "cookie", "cooler", "couch", "cow", "crab", "crayon", "crocodile", "crown", "cruise_ship",
        "cup", "diamond", "dishwasher", "diving_board", "dog", "dolphin", "donut", "door", "dragon", "dresser",
        "drill", "drums", "duck", "dumbbell", "ear", "elbow", "elephant", "envelope", "eraser", "eye",
        "eyeglasses", "face", "fan", "feather", "fence", "finger", "fire_hydrant", "fireplace", "firetruck",
        "fish", "flamingo", "flashlight", "flip_flops", "floor_lamp", "flower", "flying_saucer", "foot", "fork",
        "frog", "frying_pan", "garden", "garden_hose", "giraffe", "goatee", "golf_club", "grapes", "grass",
        "guitar", "hamburger", "hammer", "hand", "harp", "hat", "headphones", "hedgehog", "helicopter", "helmet",
        "hexagon", "hockey_puck", "hockey_stick", "horse", "hospital", "hot_air_balloon", "hot_dog", "hot_tub",
        "hourglass", "house", "house_plant", "hurricane", "ice_cream", "jacket", "jail", "kangaroo", "key",
        "keyboard", "knee", "knife", "ladder", "lantern", "laptop", "leaf", "leg", "light_bulb", "lighter",
        "lighthouse", "lightning", "line", "lion", "lipstick", "lobster", "lollipop", "mailbox", "map", "marker",
        "matches", "megaphone", "mermaid", "microphone", "microwave", "monkey", "moon", "mosquito", "motorbike",
        "mountain", "mouse", "moustache", "mouth", "mug", "mushroom", "nail", "necklace", "nose", "ocean",
        "octagon", "octopus", "onion", "oven", "owl", "paint_can", "paintbrush", "palm_tree", "panda", "pants",
        "paper_clip", "parachute", "parrot", "passport", "peanut", "pear", "peas", "pencil", "penguin", "piano",
        "pickup_truck", "picture_frame", "pig", "pillow", "pineapple", "pizza", "pliers", "police_car", "pond",
        "pool", "popsicle", "postcard", "potato", "power_outlet", "purse", "rabbit", "raccoon", "radio", "rain",
        "rainbow", "rake", "remote_control", "rhinoceros", "rifle", "river", "roller_coaster", "rollerskates",
        "sailboat", "sandwich", "saw", "saxophone", "school_bus", "scissors", "scorpion", "screwdriver",
        "sea_turtle", "see_saw", "shark", "sheep", "shoe", "shorts", "shovel", "sink", "skateboard", "skull",
        "skyscraper", "sleeping_bag", "smiley_face", "snail", "snake", "snorkel", "snowflake", "snowman",
        "soccer_ball", "sock", "speedboat", "spider", "spoon", "spreadsheet", "square", "squiggle", "squirrel",
        "stairs", "star", "steak", "stereo", "stethoscope", "stitches", "stop_sign", "stove", "strawberry",
        "streetlight", "string_bean", "submarine", "suitcase", "sun", "swan", "sweater", "swing_set", "sword",
        "syringe", "t-shirt", "table", "teapot", "teddy-bear", "telephone", "television", "tennis_racquet",
        "tent", "tiger", "toaster", "toe", "toilet", "tooth", "toothbrush", "toothpaste", "tornado", "tractor",
        "traffic_light", "train", "tree", "triangle", "trombone", "truck", "trumpet", "umbrella", "underwear",
        "van", "vase", "violin", "washing_machine", "watermelon", "waterslide", "whale", "wheel", "windmill",
        "wine_bottle", "wine_glass", "wristwatch", "yoga", "zebra", "zigzag",
    ),
    source="Peng et al., Moment Matching for Multi-Source Domain Adaptation, ICCV 2019; DomainBed DomainNet",
)

IMAGENET = DatasetSpec(
    name="imagenet",
    domains=_domains(("imagenet", "imagenet")),
    class_folders=tuple(IMAGENET_CLASSNAMES),  # already prompt-ready names, in WordNet-id label order
    source="Deng et al., ImageNet, CVPR 2009; class names from open_clip.zero_shot_metadata (CLIP's curated list)",
)

DOMAINBED: Dict[str, DatasetSpec] = {d.name: d for d in (PACS, VLCS, OFFICEHOME, TERRAINCOGNITA, DOMAINNET)}


@dataclass(frozen=True)
class CoopDataset:
    """One of CoOp's 11 base-to-new datasets (paper Table 3): where CoOp's layout keeps it, and its prompt."""

    name: str  # our name, used in registry names and results
    coop_name: str  # CoOp's dataset class (and split-file suffix)
    folder: str  # the folder under CoOp's $DATA
    image_dir: str  # image folder inside it, split-file paths are relative to it ('' = the folder itself)
    split_file: Optional[str]
    num_classes: int
    template: str  # CLIPood's CUSTOM_TEMPLATES (converter_dassl.py)


BASE2NEW: Dict[str, CoopDataset] = {d.name: d for d in (
    CoopDataset("imagenet", "ImageNet", "imagenet", "images", None, 1000, "a photo of a {}."),
    CoopDataset("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json",
                100, "a photo of a {}."),
    CoopDataset("oxford_pets", "OxfordPets", "oxford_pets", "images", "split_zhou_OxfordPets.json", 37,
                "a photo of a {}, a type of pet."),
    CoopDataset("stanford_cars", "StanfordCars", "stanford_cars", "", "split_zhou_StanfordCars.json", 196,
                "a photo of a {}."),
    CoopDataset("flowers102", "OxfordFlowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", 102,
                "a photo of a {}, a type of flower."),
    CoopDataset("food101", "Food101", "food-101", "images", "split_zhou_Food101.json", 101,
                "a photo of {}, a type of food."),
    CoopDataset("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", None, 100,
                "a photo of a {}, a type of aircraft."),
    CoopDataset("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", 397, "a photo of a {}."),
    CoopDataset("dtd", "DescribableTextures", "dtd", "images", "split_zhou_DescribableTextures.json", 47,
                "{} texture."),
    CoopDataset("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json", 10,
                "a centered satellite photo of {}."),
    CoopDataset("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", 101,
                "a photo of a person doing {}."),
)}


def coop_dataset(name: str) -> CoopDataset:
    for d in BASE2NEW.values():
        if name in (d.name, d.coop_name, d.folder):
            return d
    raise ConfigError(f"unknown base-to-new dataset {name!r}; one of {', '.join(BASE2NEW)}.")
