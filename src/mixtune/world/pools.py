"""Word pools of the mini-lab world: names, places, schools, majors, employers, topics and keywords.

Scaled-down bioS pools (Physics of LMs 3.3, METHODS §8): first/middle/last names, cities, universities, majors,
employers with their work city. Plain ASCII words only, so the tokenizer and the IFEval checkers see no surprises.
"""

from __future__ import annotations

FIRST_NAMES_FEMALE = (
    "Alice", "Anna", "Beth", "Carla", "Clara", "Diana", "Edith", "Elena", "Emma", "Fiona", "Grace", "Hanna", "Helen",
    "Irene", "Julia", "Karen", "Laura", "Linda", "Lucy", "Maria", "Marta", "Nina", "Olivia", "Paula", "Rosa", "Ruth",
    "Sara", "Sofia", "Tina", "Vera", "Wendy", "Zoe",
)
FIRST_NAMES_MALE = (
    "Aaron", "Adam", "Boris", "Carl", "Daniel", "David", "Edgar", "Felix", "Frank", "George", "Hugo", "Ivan", "Jack",
    "James", "Kevin", "Leon", "Louis", "Mark", "Martin", "Nathan", "Oscar", "Owen", "Peter", "Paul", "Robert", "Simon",
    "Thomas", "Victor", "Walter", "Xavier", "Yusuf", "Zane",
)
MIDDLE_NAMES = (
    "Ray", "Lee", "Jean", "Max", "Rose", "Kai", "Jay", "Dale", "Lane", "Blair", "Quinn", "Reese", "Sage", "Noel",
    "Wade", "Joy", "Hope", "Dean", "Cole", "Brook", "Drew", "Ellis", "Finn", "Gray", "Hale", "Jude", "Kit", "Lyle",
)
LAST_NAMES = (
    "Abbott", "Baker", "Barnes", "Bishop", "Carter", "Chen", "Cooper", "Dalton", "Dixon", "Ellison", "Fischer",
    "Foster", "Garcia", "Gibson", "Hansen", "Harper", "Hayes", "Ibarra", "Jensen", "Keller", "Kowalski", "Larsen",
    "Lopez", "Mason", "Meyer", "Morgan", "Nakamura", "Novak", "Olsen", "Parker", "Perez", "Quinlan", "Reed", "Rossi",
    "Santos", "Schmidt", "Silva", "Sullivan", "Tanaka", "Turner", "Valdez", "Walker", "Weber", "Young", "Zimmer",
)
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)
CITIES = (
    "Boston", "Chicago", "Denver", "Seattle", "Austin", "Phoenix", "Portland", "Atlanta", "Miami", "Dallas", "Detroit",
    "Houston", "Memphis", "Nashville", "Orlando", "Pittsburgh", "Sacramento", "San Diego", "Tampa", "Tucson",
    "Lisbon", "Madrid", "Berlin", "Vienna", "Prague", "Oslo", "Dublin", "Geneva", "Milan", "Krakow", "Toronto",
    "Montreal", "Sydney", "Osaka", "Seoul", "Cairo", "Lima", "Quito", "Nairobi", "Hanoi",
)
UNIVERSITIES = (
    "Harvard University", "Yale University", "Stanford University", "Princeton University", "Duke University",
    "Rice University", "Brown University", "Cornell University", "Purdue University", "Emory University",
    "Tufts University", "Baylor University", "Auburn University", "Clemson University", "Temple University",
    "Drexel University", "Tulane University", "Vanderbilt University", "Georgetown University", "Rutgers University",
    "Oxford University", "Cambridge University", "Leiden University", "Uppsala University", "Kyoto University",
    "McGill University", "Monash University", "Heidelberg University", "Bologna University", "Carleton University",
)
MAJORS = (
    "Physics", "Chemistry", "Biology", "Mathematics", "History", "Economics", "Philosophy", "Linguistics",
    "Computer Science", "Civil Engineering", "Psychology", "Sociology", "Geology", "Astronomy", "Music", "Architecture",
    "Nursing", "Statistics", "Political Science", "Marine Biology", "Art History", "Accounting", "Journalism",
    "Mechanical Engineering", "Anthropology", "Literature", "Education", "Ecology", "Finance", "Design",
)
# employer -> work city (bioS: the work city is a function of the employer)
EMPLOYERS = (
    ("Acme Robotics", "Boston"), ("Bluewave Systems", "Seattle"), ("Cedar Bank", "Chicago"),
    ("Delta Foods", "Denver"), ("Evergreen Health", "Portland"), ("Falcon Airlines", "Atlanta"),
    ("Granite Labs", "Austin"), ("Harbor Shipping", "Miami"), ("Ion Motors", "Detroit"),
    ("Jade Textiles", "Dallas"), ("Kestrel Media", "Toronto"), ("Lumen Energy", "Houston"),
    ("Maple Insurance", "Montreal"), ("Nimbus Software", "Berlin"), ("Orion Pharma", "Geneva"),
    ("Pinecone Games", "Dublin"), ("Quartz Optics", "Osaka"), ("Redwood Press", "Nashville"),
    ("Summit Hotels", "Madrid"), ("Tidal Power", "Oslo"), ("Umbra Studios", "Milan"), ("Vertex Steel", "Pittsburgh"),
    ("Willow Farms", "Sacramento"), ("Zephyr Telecom", "Seoul"), ("Atlas Mining", "Lima"), ("Beacon Logistics", "Tampa"),
    ("Crimson Retail", "Phoenix"), ("Dune Solar", "Tucson"), ("Echo Audio", "Prague"), ("Fjord Fisheries", "Oslo"),
)

# Topics of plain text and of the instruction prompts: (noun phrase, adjectives that fit it).
TOPICS = (
    ("the sea", ("blue", "deep", "calm", "cold", "wide")), ("the forest", ("green", "quiet", "dark", "old", "dense")),
    ("the city", ("busy", "loud", "bright", "large", "crowded")), ("the river", ("long", "fast", "clear", "wide", "cool")),
    ("the garden", ("green", "small", "sunny", "quiet", "neat")), ("the desert", ("dry", "hot", "vast", "empty", "still")),
    ("the mountain", ("tall", "steep", "cold", "rocky", "grand")), ("the library", ("quiet", "large", "old", "warm", "calm")),
    ("the market", ("busy", "loud", "colorful", "crowded", "lively")), ("the train", ("fast", "long", "loud", "modern", "red")),
    ("the moon", ("bright", "pale", "round", "distant", "silent")), ("the winter", ("cold", "long", "dark", "white", "quiet")),
    ("the summer", ("warm", "bright", "long", "lazy", "sunny")), ("the kitchen", ("warm", "small", "clean", "busy", "bright")),
    ("the school", ("large", "busy", "old", "friendly", "loud")), ("the farm", ("green", "quiet", "large", "muddy", "calm")),
    ("the bridge", ("long", "old", "strong", "narrow", "high")), ("the island", ("small", "sunny", "green", "remote", "calm")),
    ("the museum", ("quiet", "large", "old", "grand", "bright")), ("the park", ("green", "open", "sunny", "quiet", "large")),
    ("the lake", ("calm", "deep", "clear", "cold", "still")), ("the bakery", ("warm", "small", "busy", "sweet", "cozy")),
    ("the harbor", ("busy", "old", "windy", "loud", "wide")), ("the village", ("small", "quiet", "old", "calm", "remote")),
    ("the storm", ("loud", "dark", "wild", "strong", "cold")), ("the festival", ("loud", "bright", "busy", "happy", "long")),
    ("the bicycle", ("light", "fast", "red", "old", "simple")), ("the piano", ("old", "large", "black", "grand", "heavy")),
    ("the castle", ("old", "tall", "grand", "cold", "stone")), ("the beach", ("sunny", "warm", "wide", "sandy", "calm")),
)
PLACES = ("in the morning", "at night", "in the spring", "in the autumn", "after the rain", "on a clear day",
          "during the week", "at the weekend")
PEOPLE_WORDS = ("children", "visitors", "friends", "families", "students", "workers", "artists", "travelers")
VERBS = ("enjoy", "visit", "remember", "describe", "like", "watch", "admire", "study")
# Keywords the instruction prompts ask for; none is a substring of another pool word the responses use.
KEYWORDS = (
    "lantern", "compass", "velvet", "harvest", "meadow", "orbit", "puzzle", "ribbon", "saddle", "thunder", "walnut",
    "anchor", "blossom", "canyon", "feather", "glacier", "honey", "jungle", "kettle", "ladder", "marble", "nectar",
    "oyster", "pepper", "quill", "rocket", "shadow", "tulip", "violin", "whistle",
)
END_PHRASES = (
    "Is there anything else I can help with?", "Have a nice day.", "Let me know if you have more questions.",
    "That is all for now.", "Thank you for reading.", "I hope this helps.",
)
POSTSCRIPTS = (
    "I will write more soon.", "Thank you for asking.", "This note was short on purpose.", "Write back any time.",
    "I enjoyed writing this.",
)

# ---------------------------------------------------------------------------------------------------- bioS(N) pools
# The knowledge-capacity analysis (Physics of LMs 3.3, METHODS §8) needs the paper's attribute pool sizes: birth
# dates 12·28·200, birth cities 200, universities 300, majors 100, employers 263 (each with its city). Names keep the
# mini-lab's first/middle/last pools (64·28·45 = 80,640 full names, not the paper's 400·400·1000): the analysis uses
# this smaller N0 in its formula. Every list below is checked for its size and uniqueness at import.
BIOS_FIRST_NAMES = FIRST_NAMES_FEMALE + FIRST_NAMES_MALE  # bioS: gender is drawn independently of the first name
BIOS_YEARS = (1800, 1999)  # inclusive: 200 birth years
BIOS_CITIES = CITIES + (
    "Albany", "Anchorage", "Baltimore", "Boise", "Buffalo", "Charlotte", "Cincinnati", "Cleveland", "Columbus",
    "Des Moines", "El Paso", "Fresno", "Hartford", "Honolulu", "Indianapolis", "Jacksonville", "Kansas City",
    "Las Vegas", "Little Rock", "Louisville", "Madison", "Milwaukee", "Minneapolis", "New Orleans", "Newark",
    "Oakland", "Omaha", "Raleigh", "Reno", "Richmond", "Rochester", "Salt Lake City", "San Antonio", "San Jose",
    "Savannah", "Spokane", "Saint Louis", "Tulsa", "Wichita", "Norfolk",
    "Amsterdam", "Athens", "Barcelona", "Belgrade", "Bergen", "Bordeaux", "Bratislava", "Brussels", "Bucharest",
    "Budapest", "Copenhagen", "Edinburgh", "Florence", "Frankfurt", "Gdansk", "Genoa", "Glasgow", "Hamburg",
    "Helsinki", "Leeds", "Lille", "Liverpool", "Lyon", "Malmo", "Manchester", "Marseille", "Munich", "Naples", "Nice",
    "Porto", "Riga", "Rome", "Rotterdam", "Seville", "Sofia", "Stockholm", "Tallinn", "Turin", "Valencia", "Vilnius",
    "Warsaw", "Zagreb", "Zurich", "Antwerp", "Basel", "Cork", "Graz", "Poznan", "Leipzig", "Nantes", "Bilbao",
    "Cologne", "Dresden", "Stuttgart", "Utrecht",
    "Bangkok", "Beijing", "Busan", "Chengdu", "Delhi", "Dhaka", "Hong Kong", "Jakarta", "Karachi", "Kolkata", "Kyoto",
    "Lahore", "Manila", "Mumbai", "Nagoya", "Sapporo", "Shanghai", "Singapore", "Taipei", "Tokyo", "Ulsan", "Wuhan",
    "Yokohama", "Chennai", "Pune",
    "Adelaide", "Auckland", "Brisbane", "Perth", "Wellington", "Melbourne", "Calgary", "Edmonton", "Ottawa",
    "Vancouver", "Winnipeg", "Halifax", "Quebec", "Bogota", "Buenos Aires", "Caracas", "Havana", "Medellin",
    "Montevideo", "Santiago", "Sao Paulo", "Recife", "Accra", "Addis Ababa", "Algiers", "Casablanca", "Dakar", "Durban",
    "Kampala", "Lagos", "Luanda", "Tunis", "Cape Town", "Johannesburg", "Istanbul", "Ankara", "Tehran", "Dubai", "Doha",
    "Amman",
)
# 300 universities: "University of <city>" for every city and "<city> State University" for the first 100.
BIOS_UNIVERSITIES = tuple(f"University of {c}" for c in BIOS_CITIES) + tuple(
    f"{c} State University" for c in BIOS_CITIES[:100])
BIOS_MAJORS = MAJORS + (
    "Zoology", "Botany", "Genetics", "Neuroscience", "Biochemistry", "Microbiology", "Pharmacy", "Medicine",
    "Dentistry", "Veterinary Science", "Public Health", "Nutrition", "Kinesiology", "Agriculture", "Forestry",
    "Oceanography", "Meteorology", "Environmental Science", "Materials Science", "Chemical Engineering",
    "Electrical Engineering", "Aerospace Engineering", "Biomedical Engineering", "Industrial Engineering",
    "Nuclear Engineering", "Software Engineering", "Data Science", "Information Systems", "Robotics", "Game Design",
    "Graphic Design", "Fashion Design", "Interior Design", "Film Studies", "Theater", "Dance", "Photography",
    "Creative Writing", "Classics", "Archaeology", "Religious Studies", "Theology", "Geography", "Urban Planning",
    "International Relations", "Public Policy", "Law", "Criminology", "Social Work", "Library Science", "Marketing",
    "Management", "Business Administration", "Hospitality", "Real Estate", "Actuarial Science", "Operations Research",
    "Applied Mathematics", "Logic", "Cognitive Science", "Musicology", "Sculpture", "Painting", "Asian Studies",
    "African Studies", "Latin American Studies", "Gender Studies", "Translation", "Optometry", "Epidemiology",
)
_EMPLOYER_HEADS = (
    "Apex", "Birch", "Cobalt", "Crown", "Eagle", "Ember", "Frost", "Garnet", "Golden", "Horizon", "Indigo", "Iron",
    "Juniper", "Lotus", "Meridian", "Nova", "Oak", "Onyx", "Pioneer", "Polar", "Prism", "Raven", "Sapphire", "Silver",
    "Solstice", "Sterling", "Titan", "Topaz", "Vista", "Wolf",
)
_EMPLOYER_TAILS = (
    "Analytics", "Bakery", "Biotech", "Capital", "Chemicals", "Construction", "Consulting", "Electronics", "Foods",
    "Freight", "Industries", "Networks", "Partners", "Pharmacy", "Robotics", "Software", "Studios", "Systems",
    "Telecom", "Textiles",
)


def _bios_employers() -> tuple[tuple[str, str], ...]:
    """The mini-lab's 30 employers plus 233 generated ones, each with a work city drawn from BIOS_CITIES (seeded)."""
    import random

    rng = random.Random("bios-employers")
    taken = {name for name, _ in EMPLOYERS}
    combos = [f"{h} {t}" for h in _EMPLOYER_HEADS for t in _EMPLOYER_TAILS if f"{h} {t}" not in taken]
    return EMPLOYERS + tuple((name, rng.choice(BIOS_CITIES)) for name in rng.sample(combos, 263 - len(EMPLOYERS)))


BIOS_EMPLOYERS = _bios_employers()

for _pool, _size in ((BIOS_CITIES, 200), (BIOS_UNIVERSITIES, 300), (BIOS_MAJORS, 100), (BIOS_EMPLOYERS, 263),
                     (BIOS_FIRST_NAMES, 64)):
    if len(_pool) != _size or len(set(_pool)) != _size:
        raise AssertionError(f"bioS pool of size {len(_pool)} ({len(set(_pool))} unique), expected {_size}")
