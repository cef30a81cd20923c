"""Generate the shipped synthetic 'sensitive' dataset: fictional clinic notes.

Every name, date and number is made up from fixed word lists with a fixed seed, so the
file is reproducible and contains no real person's data. Output: one JSON object per
line with a "text" field (examples/data/synthetic_clinic_notes.jsonl).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

FIRST = [
    "Ada",
    "Bruno",
    "Chloe",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Keiko",
    "Luca",
    "Mara",
    "Nils",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
    "Umar",
    "Vera",
    "Wim",
    "Yara",
    "Zeno",
]
LAST = [
    "Abbott",
    "Berg",
    "Castell",
    "Duarte",
    "Eklund",
    "Fischer",
    "Garcia",
    "Horvat",
    "Ibsen",
    "Jansen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
    "Quist",
    "Rossi",
    "Schmidt",
    "Tanaka",
]
CONDITIONS = [
    ("seasonal allergies", "cetirizine 10 mg daily"),
    ("mild hypertension", "lisinopril 10 mg daily"),
    ("type 2 diabetes", "metformin 500 mg twice daily"),
    ("a sprained ankle", "ibuprofen 400 mg as needed"),
    ("migraine", "sumatriptan 50 mg at onset"),
    ("asthma", "an albuterol inhaler as needed"),
    ("insomnia", "sleep hygiene counselling"),
    ("high cholesterol", "atorvastatin 20 mg nightly"),
    ("a sinus infection", "amoxicillin 500 mg three times daily"),
    ("back pain", "physiotherapy twice a week"),
]
CITIES = ["Lisbon", "Oslo", "Tartu", "Ghent", "Graz", "Turku", "Porto", "Bergen", "Lyon", "Krakow"]


def note(rng: random.Random) -> str:
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    cond, plan = rng.choice(CONDITIONS)
    age = rng.randint(19, 88)
    day, month = rng.randint(1, 28), rng.choice(["January", "March", "May", "July", "September", "November"])
    weeks = rng.choice([2, 4, 6, 8, 12])
    return (
        f"Patient {name}, age {age}, from {rng.choice(CITIES)}, was seen on {month} {day} for {cond}. "
        f"The plan is {plan}. Follow-up in {weeks} weeks."
    )


def main(n: int = 512, out: str = "examples/data/synthetic_clinic_notes.jsonl") -> None:
    rng = random.Random(20261122)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for _ in range(n):
            fh.write(json.dumps({"text": note(rng)}) + "\n")
    print(f"wrote {n} notes to {path}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
