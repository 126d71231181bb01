"""Everyday chat prompts for drafter training: instruction templates crossed with topics, personas and tasks.

The standard-library prompts (``train_prompts.py``) teach a drafter how the target explains code
and documentation; a drafter serving chat also has to know how it writes a story, plays a role,
answers a trivia question or reasons through a puzzle. These prompts cover Spec-Bench's kinds of
request (writing, roleplay, reasoning, math, coding, extraction, STEM, humanities, QA,
summarization) with wording and subjects written for specd, never taken from the benchmark; what
the drafter learns from is the target's own answers to them (self-distillation).

Deterministic for a seed: every (template, filler) pair is enumerated, shuffled once, and taken in
order, so ``count`` prompts are always the same ones and never repeat.
"""

from __future__ import annotations

import random
from itertools import product

# fmt: off
TOPICS = (
    "volcanoes", "the water cycle", "photosynthesis", "black holes", "the immune system", "climate change",
    "plate tectonics", "the French Revolution", "the Roman Empire", "the printing press", "the Silk Road",
    "the Industrial Revolution", "the Renaissance", "ancient Egypt", "the Cold War", "the moon landing",
    "electric cars", "solar power", "wind turbines", "nuclear fusion", "recycling", "coral reefs", "rainforests",
    "honeybees", "migratory birds", "sleep", "meditation", "marathon training", "healthy breakfasts",
    "vegetarian cooking", "baking bread", "coffee", "tea ceremonies", "chess", "jazz music", "classical music",
    "street art", "photography", "film noir", "video games", "board games", "social media", "online privacy",
    "password security", "cloud computing", "machine learning", "smartphones", "the internet", "3D printing",
    "robotics", "space tourism", "Mars exploration", "the periodic table", "DNA", "vaccines", "antibiotics",
    "the human brain", "memory", "learning a new language", "remote work", "time management", "public speaking",
    "job interviews", "personal finance", "inflation", "interest rates", "the stock market", "small businesses",
    "minimalism", "urban gardening", "composting", "public transport", "city planning", "architecture",
    "bridges", "skyscrapers", "earthquakes", "hurricanes", "the ocean floor", "deep-sea creatures", "dinosaurs",
    "evolution", "genetics", "the solar system", "telescopes", "satellites", "GPS", "the history of writing",
    "mythology", "folk tales", "Shakespeare", "poetry", "libraries", "museums", "the Olympic Games", "football",
    "basketball", "cycling", "mountain climbing", "camping", "national parks", "deserts", "glaciers", "rivers",
    "democracy", "human rights", "free speech", "voting", "taxes", "trade", "globalization", "supply chains",
    "artificial sweeteners", "nutrition labels", "food waste", "water scarcity", "electricity grids", "batteries",
    "semiconductors", "quantum computers", "encryption", "blockchain", "open-source software", "teamwork",
    "leadership", "friendship", "parenting", "pets", "dogs", "cats", "horses", "owls", "whales", "octopuses",
    "ants", "mushrooms", "trees", "seasons", "rain", "snow", "the northern lights", "rainbows", "thunderstorms",
    "ancient Greece", "the Vikings", "the Maya", "medieval castles", "samurai", "pirates", "lighthouses",
    "trains", "airplanes", "submarines", "the Titanic", "the Great Wall of China", "the pyramids", "Venice",
    "Tokyo", "Paris", "New York", "the Amazon river", "the Sahara", "Antarctica", "Iceland", "Hawaii",
    "a small fishing village", "a mountain town", "a night market", "a train journey", "a rainy afternoon",
    "a first day at school", "a lost wallet", "a surprise party", "a job offer", "moving to a new city",
)

PERSONAS = (
    "a pirate captain", "a medieval knight", "a detective in 1920s London", "a friendly robot", "a wise old wizard",
    "a grumpy chef", "a sports commentator", "a museum tour guide", "a time traveller from the year 3000",
    "a park ranger", "a kindergarten teacher", "a stand-up comedian", "an astronaut on the space station",
    "a marine biologist", "a Roman senator", "a fashion designer", "a lighthouse keeper", "a fitness coach",
    "a librarian", "a travel agent", "a barista", "a farmer", "a poet", "a news anchor", "a startup founder",
    "a history professor", "a mountain guide", "a jazz musician", "a zookeeper", "a village doctor",
)

QUESTIONS = (
    "What does a typical day look like for you?", "What advice would you give to someone just starting out?",
    "What is the hardest part of your work?", "Tell me about the most memorable moment of your life.",
    "What do you think about modern technology?", "How would you spend a free weekend?",
    "What would you change about the world if you could?", "Describe your favourite place.",
    "What is the best lesson you have ever learned?", "How do you deal with a difficult day?",
)

# (category, template) with {topic}; roleplay templates take {persona} and {question}.
TOPIC_TEMPLATES = (
    ("writing", "Write a short story about {topic}."),
    ("writing", "Compose a blog post about {topic} for curious readers."),
    ("writing", "Write a poem about {topic}."),
    ("writing", "Draft a persuasive essay arguing why people should learn more about {topic}."),
    ("writing", "Write a short news article about {topic}."),
    ("writing", "Write a friendly email inviting a colleague to a talk about {topic}."),
    ("writing", "Write a product description for a book about {topic}."),
    ("stem", "Explain {topic} to a high school student."),
    ("stem", "What are the main scientific ideas behind {topic}?"),
    ("stem", "Describe how {topic} works, step by step."),
    ("humanities", "How has {topic} shaped society over time?"),
    ("humanities", "Discuss the pros and cons of {topic}."),
    ("humanities", "What are the most common misconceptions about {topic}?"),
    ("qa", "What is {topic}?"),
    ("qa", "Give me five interesting facts about {topic}."),
    ("qa", "Why is {topic} important?"),
    ("reasoning", "List three questions someone might ask about {topic}, and answer each one with careful reasoning."),
    ("reasoning", "Compare {topic} with something similar and explain the differences."),
    ("extraction", "Create a table with three columns (aspect, description, example) about {topic}."),
    ("summarization", "Summarize what everyone should know about {topic} in three bullet points."),
    ("coding", "Write a Python program that stores facts about {topic} in a dictionary and prints them."),
    ("writing", "Plan a one-day trip centred on {topic}, hour by hour."),
)
ROLEPLAY_TEMPLATES = (
    ("roleplay", "Pretend you are {persona}. Stay in character for the whole answer. {question}"),
    ("roleplay", "Act as {persona} and answer me the way they would speak. {question}"),
)
MATH_TEMPLATES = (
    ("math", "What is {a} times {b}? Show your work."),
    ("math", "Solve for x: {a}x + {b} = {c}."),
    ("math", "A rectangle is {a} cm long and {b} cm wide. What are its area and perimeter?"),
    ("math", "What is the sum of all whole numbers from 1 to {a}?"),
    ("math", "A shop sells pens at {a} dollars each. How much do {b} pens cost after a {c} percent discount?"),
    ("math", "Is {c} a prime number? Explain how you check."),
    ("math", "A train travels {a} km in {b} hours. What is its average speed?"),
)
CODING_TASKS = (
    "reverses a string", "checks whether a number is prime", "counts the words in a text file",
    "finds the largest element of a list", "merges two sorted lists", "computes the Fibonacci numbers up to n",
    "removes duplicates from a list while keeping the order", "converts Celsius to Fahrenheit",
    "validates an email address", "implements binary search", "parses a CSV file and averages a column",
    "reads a JSON file and prints its keys", "implements a stack class", "implements a queue with two stacks",
    "checks whether a string is a palindrome", "sorts a list of dictionaries by a key", "flattens a nested list",
    "computes the greatest common divisor of two numbers", "generates a random password",
    "counts the vowels in a sentence", "transposes a matrix", "finds all anagrams of a word in a list",
    "implements bubble sort", "computes the factorial of a number recursively", "simulates rolling two dice",
)
CODING_TEMPLATES = (
    ("coding", "Write a Python function that {task}."),
    ("coding", "Write a JavaScript function that {task}, and explain it."),
    ("coding", "Write a C++ program that {task}."),
    ("coding", "How would you write a function that {task}? Give the code and its time complexity."),
)

# fmt: on


def _all_prompts() -> list[tuple[str, str]]:
    """Every (category, text) the templates can make, in a fixed order."""
    out = [(c, t.format(topic=topic)) for (c, t), topic in product(TOPIC_TEMPLATES, TOPICS)]
    out += [(c, t.format(persona=p, question=q)) for (c, t), p, q in product(ROLEPLAY_TEMPLATES, PERSONAS, QUESTIONS)]
    out += [(c, t.format(task=task)) for (c, t), task in product(CODING_TEMPLATES, CODING_TASKS)]
    numbers = random.Random(1234)
    for i in range(600):
        c, t = MATH_TEMPLATES[i % len(MATH_TEMPLATES)]
        a, b = numbers.randint(3, 97), numbers.randint(2, 60)
        out.append((c, t.format(a=a, b=b, c=numbers.randint(5, 199))))
    return list(dict.fromkeys(out))  # drop the rare repeated math prompt, keep the order


def build_chat_prompts(count: int, seed: int = 0) -> list[dict[str, object]]:
    """``count`` distinct prompts (fewer if the templates run out), deterministic for ``seed``."""
    prompts = _all_prompts()
    random.Random(seed).shuffle(prompts)
    return [
        {"question_id": f"chat-{i}", "category": category, "turns": [text]}
        for i, (category, text) in enumerate(prompts[:count])
    ]


def capacity() -> int:
    """How many distinct prompts the templates make."""
    return len(_all_prompts())
