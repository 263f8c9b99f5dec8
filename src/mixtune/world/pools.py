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
