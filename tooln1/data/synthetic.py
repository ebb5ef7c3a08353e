"""Synthetic tool-calling rows in the xLAM schema, for tests and the CPU quickstart.

Rows look exactly like ``Salesforce/xlam-function-calling-60k`` (``{id, query, answers, tools}``
with JSON-string fields), so they go through the same loader as the real data. Thirty-two tool
templates cover weather, currency, calendar, e-mail, search, maths, travel, shopping, …; argument
values span every JSON type (string, integer, float, boolean, array, object, null).

``simple=True`` makes the query → call mapping easy to learn for a tiny model trained for minutes:
one short query pattern per tool, only required arguments, every value copied verbatim from the
query, one call, two candidate tools and no irrelevant queries (each knob can be overridden).

``tiny=True`` (the CPU quickstart) goes further: three one-argument tools (``TINY_TEMPLATES``) whose
values come from closed sets of four and are quoted in the query as they are in the call
(``weather in "Paris"`` → ``{"city": "Paris"}``: the same tokens, so a tiny model can copy them), and
the tool block holds one candidate, the tool asked for: choosing between two was near chance for
the quickstart's 0.29M model after its SFT warm-up (names 0.41-0.72), and GRPO then drifted the
choice instead of learning it (docs/training.md); otherwise as simple mode (one call).
"""
from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from typing import Any, Callable

Sampler = Callable[[random.Random], Any]

CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Cairo", "Lima", "Seoul",
          "Toronto", "Sydney", "Mumbai", "Nairobi", "Dublin", "Prague", "Vienna", "Lisbon", "Austin", "Boston"]
CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "INR", "CNY", "SEK"]
PEOPLE = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
TOPICS = ["climate", "football", "elections", "space", "ai", "music", "markets", "health", "chess", "films"]
TICKERS = ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "IBM", "ORCL", "INTC"]
LANGUAGES = ["French", "German", "Spanish", "Japanese", "Italian", "Korean", "Hindi", "Swahili"]
WORDS = ["budget", "review", "launch", "party", "dentist", "gym", "lunch", "report", "trip", "call"]
CUISINES = ["thai", "italian", "mexican", "indian", "sushi", "vegan", "greek", "korean"]
SONGS = ["Yellow", "Hello", "Imagine", "Halo", "Clocks", "Roxanne", "Wonderwall", "Creep"]
ARTISTS = ["Coldplay", "Adele", "Queen", "Beyonce", "Muse", "Sting", "Oasis", "Radiohead"]
MOVIES = ["Inception", "Heat", "Alien", "Vertigo", "Up", "Jaws", "Rocky", "Arrival"]
DISHES = ["lasagna", "curry", "paella", "ramen", "risotto", "tacos", "pancakes", "goulash"]
FOODS = ["pizza", "salad", "fries", "soup", "burger", "noodles", "cake", "wings"]
UNITS = [("km", "miles"), ("kg", "lb"), ("celsius", "fahrenheit"), ("liters", "gallons"), ("m", "ft")]
ROOMS = ["Atlas", "Orion", "Vega", "Lyra"]


def _date(rng: random.Random) -> str:
    return f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _time(rng: random.Random) -> str:
    return f"{rng.randint(0, 23):02d}:{rng.choice(['00', '15', '30', '45'])}"


def _pick(pool: list) -> Sampler:
    return lambda rng: rng.choice(pool)


def _ints(lo: int, hi: int) -> Sampler:
    return lambda rng: rng.randint(lo, hi)


def _floats(lo: float, hi: float) -> Sampler:
    return lambda rng: round(rng.uniform(lo, hi), 2)


def _sublist(pool: list, lo: int = 2, hi: int = 3) -> Sampler:
    return lambda rng: rng.sample(pool, rng.randint(lo, hi))


def _text(rng: random.Random) -> str:
    return " ".join(rng.sample(WORDS, rng.randint(2, 4)))


def _join(values: list) -> str:
    return ", ".join(str(v) for v in values)


def _sentence(query: str) -> str:
    return query if query[-1:] in ".?!" else query + "."


def _phrase(table: dict) -> Callable[[Any], str]:
    return lambda v: table[v]


@dataclass(frozen=True)
class Param:
    """One tool argument: schema type/description, how to sample it and how the query says it."""

    name: str
    type: str
    description: str
    sample: Sampler
    render: Callable[[Any], str] = str  # value -> the words that appear in the query
    required: bool = True


@dataclass(frozen=True)
class Template:
    """A tool and query patterns; a pattern's ``{slots}`` decide which arguments the call has."""

    name: str
    description: str
    params: tuple[Param, ...]
    patterns: tuple[str, ...]  # patterns[0] is the short one used in simple mode
    slots: tuple[frozenset, ...] = field(init=False)

    def __post_init__(self):
        fmt = string.Formatter()
        slots = tuple(frozenset(f for _, f, _, _ in fmt.parse(p) if f) for p in self.patterns)
        known = {p.name for p in self.params}
        required = {p.name for p in self.params if p.required}
        for pattern, used in zip(self.patterns, slots):
            if not used <= known or not required <= used:
                raise ValueError(f"template {self.name}: pattern {pattern!r} slots {sorted(used)} "
                                 f"must cover required {sorted(required)} within {sorted(known)}")
        object.__setattr__(self, "slots", slots)

    @property
    def verbatim(self) -> bool:
        """True when the short pattern spells every argument exactly as its JSON value (simple mode)."""
        return all(p.render is str for p in self.params if p.name in self.slots[0])

    def tool(self) -> dict:
        """The tool in xLAM's schema: parameters map name -> {description, type[, default]}."""
        params = {}
        for p in self.params:
            spec = {"description": p.description, "type": p.type}
            if not p.required:
                spec["default"] = ""
            params[p.name] = spec
        return {"name": self.name, "description": self.description, "parameters": params}

    def instantiate(self, rng: random.Random, simple: bool) -> tuple[str, dict]:
        """(query, arguments) with the arguments the chosen pattern mentions."""
        k = 0 if simple else rng.randrange(len(self.patterns))
        used = self.slots[k]
        arguments, words = {}, {}
        for p in self.params:
            if p.name in used:
                value = p.sample(rng)
                arguments[p.name] = value
                words[p.name] = p.render(value)
        return self.patterns[k].format(**words), arguments


def _P(name, type_, desc, sample, render=str, required=True) -> Param:
    return Param(name, type_, desc, sample, render, required)


YES_NO = {True: "yes", False: "no"}

TEMPLATES: tuple[Template, ...] = (
    Template("get_weather", "Get the weather forecast for a city.", (
        _P("city", "str", "City name.", _pick(CITIES)),
        _P("days", "int", "Number of forecast days.", _ints(1, 14), required=False),
        _P("units", "str", "celsius or fahrenheit.", _pick(["celsius", "fahrenheit"]), required=False)),
        ("weather in {city}", "What's the weather going to be in {city} for the next {days} days?",
         "Give me a {days}-day forecast for {city} in {units}.", "Is it raining in {city} right now?")),
    Template("convert_currency", "Convert an amount between currencies.", (
        _P("amount", "float", "Amount to convert.", _floats(1, 5000)),
        _P("from_currency", "str", "ISO code of the source currency.", _pick(CURRENCIES)),
        _P("to_currency", "str", "ISO code of the target currency.", _pick(CURRENCIES))),
        ("convert {amount} {from_currency} to {to_currency}",
         "How much is {amount} {from_currency} in {to_currency}?",
         "I have {amount} {from_currency}; what would that be in {to_currency}?")),
    Template("create_calendar_event", "Add an event to the user's calendar.", (
        _P("title", "str", "Event title.", _pick(WORDS)),
        _P("date", "str", "Date, YYYY-MM-DD.", _date),
        _P("duration_minutes", "int", "Length in minutes.", _ints(15, 180), required=False)),
        ("add event {title} on {date}", "Put '{title}' in my calendar on {date} for {duration_minutes} minutes.",
         "Schedule a {duration_minutes}-minute {title} on {date}.")),
    Template("send_email", "Send an e-mail.", (
        _P("to", "str", "Recipient address.", lambda r: r.choice(PEOPLE) + "@example.com"),
        _P("subject", "str", "Subject line.", _pick(WORDS)),
        _P("body", "str", "Message body.", _text, required=False)),
        ("email {to} about {subject}", "Send an email to {to} with subject '{subject}' saying '{body}'.",
         "Write to {to}, subject {subject}, text: {body}")),
    Template("web_search", "Search the web.", (
        _P("query", "str", "Search terms.", _text),
        _P("max_results", "int", "Maximum number of results.", _ints(1, 50), required=False)),
        ("search for {query}", "Find the top {max_results} web results for '{query}'.",
         "Look up {query} online.")),
    Template("calculate_sum", "Add a list of numbers.", (
        _P("numbers", "List[float]", "Numbers to add.",
           lambda r: [round(r.uniform(-100, 100), 1) for _ in range(r.randint(2, 4))], _join),),
        ("sum {numbers}", "What is the total of {numbers}?", "Add these numbers up: {numbers}.")),
    Template("calculate_power", "Raise an integer to an integer power.", (
        _P("base", "int", "Base.", _ints(-9, 20)),
        _P("exponent", "int", "Exponent.", _ints(0, 10))),
        ("{base} to the power {exponent}", "Compute {base} raised to the {exponent}th power.",
         "What's {base}^{exponent}?")),
    Template("get_stock_prices", "Latest prices for stock tickers.", (
        _P("tickers", "List[str]", "Ticker symbols.", _sublist(TICKERS), _join),),
        ("prices of {tickers}", "Show me current stock quotes for {tickers}.",
         "How are {tickers} trading today?")),
    Template("translate_text", "Translate text into a language.", (
        _P("text", "str", "Text to translate.", _text),
        _P("target_language", "str", "Target language.", _pick(LANGUAGES))),
        ("translate '{text}' to {target_language}", "How do you say '{text}' in {target_language}?",
         "Please render '{text}' in {target_language}.")),
    Template("set_alarm", "Set an alarm clock.", (
        _P("time", "str", "Time, HH:MM.", _time),
        _P("label", "str", "Alarm label.", _pick(WORDS), required=False)),
        ("alarm at {time}", "Wake me up at {time} and label it {label}.", "Set an alarm for {time}.")),
    Template("book_flight", "Book a flight.", (
        _P("origin", "str", "Departure city.", _pick(CITIES)),
        _P("destination", "str", "Arrival city.", _pick(CITIES)),
        _P("date", "str", "Travel date, YYYY-MM-DD.", _date),
        _P("nonstop", "bool", "Only nonstop flights.", lambda r: r.random() < 0.5,
           _phrase({True: "nonstop", False: "any"}), required=False)),
        ("fly {origin} to {destination} on {date}",
         "Book me a {nonstop} flight from {origin} to {destination} on {date}.",
         "I need to get from {origin} to {destination} on {date}, {nonstop} flight is fine.")),
    Template("find_restaurants", "Find restaurants in a city.", (
        _P("city", "str", "City.", _pick(CITIES)),
        _P("cuisine", "str", "Cuisine.", _pick(CUISINES)),
        _P("max_price", "int", "Max price per person in USD.", _ints(10, 120), required=False)),
        ("{cuisine} food in {city}", "Any {cuisine} restaurants in {city} under {max_price} dollars?",
         "Where can I eat {cuisine} in {city}?")),
    Template("get_news", "Latest news headlines on a topic.", (
        _P("topic", "str", "Topic.", _pick(TOPICS)),
        _P("limit", "int", "Number of headlines.", _ints(1, 20), required=False)),
        ("news about {topic}", "Give me {limit} headlines about {topic}.", "What's new in {topic}?")),
    Template("set_reminder", "Create a reminder; repeat is null for a one-off reminder.", (
        _P("message", "str", "What to remind.", _pick(WORDS)),
        _P("date", "str", "Date, YYYY-MM-DD.", _date),
        _P("repeat", "Optional[str]", "daily, weekly or null.", _pick([None, "daily", "weekly"]),
           _phrase({None: "just once", "daily": "every day", "weekly": "every week"}))),
        ("remind me {message} on {date} {repeat}", "Remind me about the {message} on {date}, {repeat}.",
         "On {date} I need a {message} reminder, {repeat}.")),
    Template("play_music", "Play a song.", (
        _P("song", "str", "Song title.", _pick(SONGS)),
        _P("artist", "str", "Artist.", _pick(ARTISTS), required=False),
        _P("shuffle", "bool", "Shuffle afterwards.", lambda r: r.random() < 0.5,
           _phrase({True: "then shuffle", False: "no shuffle"}), required=False)),
        ("play {song}", "Play {song} by {artist}, {shuffle}.", "Put on {song} by {artist}.")),
    Template("get_directions", "Directions between two places.", (
        _P("origin", "str", "Start.", _pick(CITIES)),
        _P("destination", "str", "End.", _pick(CITIES)),
        _P("mode", "str", "driving, walking or transit.", _pick(["driving", "walking", "transit"]),
           required=False)),
        ("directions from {origin} to {destination}", "How do I get from {origin} to {destination} by {mode}?",
         "Route {origin} -> {destination}, {mode}.")),
    Template("calculate_bmi", "Body-mass index from weight and height.", (
        _P("weight_kg", "float", "Weight in kg.", _floats(40, 150)),
        _P("height_m", "float", "Height in metres.", _floats(1.4, 2.1))),
        ("bmi for {weight_kg} kg and {height_m} m", "I weigh {weight_kg} kg and I'm {height_m} m tall; BMI?")),
    Template("convert_units", "Convert a value between units.", (
        _P("value", "float", "Value.", _floats(0, 1000)),
        _P("from_unit", "str", "Source unit.", lambda r: r.choice(UNITS)[0]),
        _P("to_unit", "str", "Target unit.", lambda r: r.choice(UNITS)[1])),
        ("convert {value} {from_unit} to {to_unit}", "How many {to_unit} is {value} {from_unit}?")),
    Template("search_products", "Search a shop; filters is an object with min_price and max_price.", (
        _P("query", "str", "Product keywords.", _pick(FOODS + WORDS)),
        _P("filters", "Dict[str, int]", "Price range.",
           lambda r: {"min_price": r.randint(1, 50), "max_price": r.randint(51, 500)},
           lambda v: f"{v['min_price']} to {v['max_price']}")),
        ("{query} priced {filters}", "Find {query} products priced from {filters} dollars.")),
    Template("create_user", "Create an account; profile is an object.", (
        _P("profile", "Dict[str, Any]", "name (str), age (int), active (bool).",
           lambda r: {"name": r.choice(PEOPLE), "age": r.randint(18, 90), "active": r.random() < 0.5},
           lambda v: f"{v['name']} aged {v['age']} {'active' if v['active'] else 'inactive'}"),),
        ("create user {profile}", "Register a new account for {profile}.")),
    Template("get_timezone", "Time zone of a city.", (
        _P("city", "str", "City.", _pick(CITIES)),),
        ("timezone of {city}", "Which time zone is {city} in?", "What time is it in {city}?")),
    Template("compute_mean", "Arithmetic mean of integers.", (
        _P("values", "List[int]", "Integers.", lambda r: [r.randint(-50, 50) for _ in range(r.randint(2, 5))],
           _join),),
        ("mean of {values}", "What's the average of {values}?")),
    Template("is_prime", "Check whether an integer is prime.", (
        _P("number", "int", "Integer to test.", _ints(2, 10_000)),),
        ("is {number} prime", "Tell me if {number} is a prime number.")),
    Template("fibonacci", "The n-th Fibonacci number.", (
        _P("n", "int", "Index.", _ints(1, 90)),),
        ("fibonacci {n}", "What is Fibonacci number {n}?")),
    Template("get_movie_details", "Details of a movie.", (
        _P("title", "str", "Title.", _pick(MOVIES)),
        _P("year", "int", "Release year.", _ints(1950, 2024), required=False)),
        ("movie {title}", "Tell me about the {year} film {title}.", "Who directed {title}?")),
    Template("order_food", "Order food for delivery or pickup.", (
        _P("restaurant", "str", "Restaurant.", lambda r: r.choice(CUISINES).title() + " House"),
        _P("items", "List[str]", "Dishes.", _sublist(FOODS, 1, 3), _join),
        _P("delivery", "bool", "Deliver (true) or pick up (false).", lambda r: r.random() < 0.5,
           _phrase({True: "delivered", False: "for pickup"}))),
        ("order {items} from {restaurant} {delivery}", "Get me {items} from {restaurant}, {delivery}.")),
    Template("check_flight_status", "Status of a flight.", (
        _P("flight_number", "str", "Flight number.",
           lambda r: r.choice(["BA", "LH", "AF", "UA", "QF"]) + str(r.randint(10, 999))),),
        ("status of {flight_number}", "Is flight {flight_number} on time?")),
    Template("get_exchange_rate", "Exchange rates from a base currency.", (
        _P("base", "str", "Base currency.", _pick(CURRENCIES)),
        _P("symbols", "List[str]", "Target currencies.", _sublist(CURRENCIES), _join)),
        ("{base} rate to {symbols}", "What are the {base} exchange rates against {symbols}?")),
    Template("schedule_meeting", "Schedule a meeting; room may be null for a call.", (
        _P("participants", "List[str]", "People.", _sublist(PEOPLE), _join),
        _P("date", "str", "Date, YYYY-MM-DD.", _date),
        _P("room", "Optional[str]", "Room name or null.", _pick(ROOMS + [None]),
           lambda v: "online" if v is None else f"in room {v}", required=False)),
        ("meet {participants} on {date}", "Set up a meeting with {participants} on {date} {room}.")),
    Template("get_recipe", "Find a recipe.", (
        _P("dish", "str", "Dish.", _pick(DISHES)),
        _P("vegetarian", "bool", "Vegetarian only.", lambda r: r.random() < 0.5,
           _phrase({True: "vegetarian", False: "regular"}), required=False)),
        ("recipe for {dish}", "Give me a {vegetarian} {dish} recipe.")),
    Template("count_words", "Count the words of a text.", (
        _P("text", "str", "Text.", _text),),
        ("count words in '{text}'", "How many words are in '{text}'?")),
    Template("generate_password", "Generate a random password.", (
        _P("length", "int", "Length.", _ints(8, 64)),
        _P("include_symbols", "bool", "Use symbols.", lambda r: r.random() < 0.5,
           _phrase({True: "with symbols", False: "without symbols"}))),
        ("password of {length} chars {include_symbols}", "Make me a {length}-character password {include_symbols}.")),
)
TINY_TEMPLATES: tuple[Template, ...] = (
    Template("get_weather", "Weather in a city.", (_P("city", "str", "City.", _pick(CITIES[:4])),),
             ('weather in "{city}"',)),
    Template("get_time", "Local time in a city.", (_P("city", "str", "City.", _pick(CITIES[:4])),),
             ('time in "{city}"',)),
    Template("get_news", "News on a topic.", (_P("topic", "str", "Topic.", _pick(TOPICS[:4])),),
             ('news about "{topic}"',)),
)
_TOOL_JSON = tuple(json.dumps(t.tool()) for t in TEMPLATES)
_TINY_TOOL_JSON = tuple(json.dumps(t.tool()) for t in TINY_TEMPLATES)
_VERBATIM = tuple(i for i, t in enumerate(TEMPLATES) if t.verbatim)


def generate_xlam_rows(
    n: int,
    seed: int = 0,
    simple: bool = False,
    *,
    tiny: bool = False,
    num_candidates: int | None = None,
    parallel_fraction: float | None = None,
    irrelevant_fraction: float | None = None,
    max_parallel: int = 3,
) -> list[dict]:
    """``n`` rows ``{id, query, answers, tools}`` (JSON strings), deterministic in ``seed``.

    Defaults: full mode 2-5 candidate tools, 20% parallel (2..max_parallel calls), 10% irrelevant
    (answer ``[]``); simple mode 2 candidates, no parallel, no irrelevant; tiny mode is simple
    mode over ``TINY_TEMPLATES`` with 1 candidate. Rows of a larger ``n`` extend those of a smaller one with the same
    settings.
    """
    if n < 0:
        raise ValueError(f"generate_xlam_rows: n={n} must be >= 0")
    rng = random.Random(seed)
    simple = simple or tiny
    templates, tool_json = (TINY_TEMPLATES, _TINY_TOOL_JSON) if tiny else (TEMPLATES, _TOOL_JSON)
    parallel_fraction = (0.0 if simple else 0.2) if parallel_fraction is None else parallel_fraction
    irrelevant_fraction = (0.0 if simple else 0.1) if irrelevant_fraction is None else irrelevant_fraction
    rows = []
    all_idx = range(len(templates))
    askable = tuple(all_idx) if tiny else _VERBATIM if simple else tuple(all_idx)
    for i in range(n):
        candidates = num_candidates or (1 if tiny else 2 if simple else rng.randint(2, 5))
        u = rng.random()
        if u < irrelevant_fraction:
            asked = [rng.choice(askable)]
            tool_idx = rng.sample([j for j in all_idx if j != asked[0]], candidates)
            calls_from = []
        else:
            k = rng.randint(2, max_parallel) if u < irrelevant_fraction + parallel_fraction else 1
            asked = [rng.choice(askable) for _ in range(k)]
            distinct = list(dict.fromkeys(asked))
            others = rng.sample([j for j in all_idx if j not in distinct], max(0, candidates - len(distinct)))
            tool_idx = distinct + others
            rng.shuffle(tool_idx)
            calls_from = asked
        queries, calls = [], []
        for j in asked:
            query, arguments = templates[j].instantiate(rng, simple)
            queries.append(query)
            calls.append({"name": templates[j].name, "arguments": arguments})
        rows.append({
            "id": i,
            "query": queries[0] if len(queries) == 1 else " Also, ".join(_sentence(q) for q in queries),
            "answers": json.dumps(calls if calls_from else []),
            "tools": "[" + ", ".join(tool_json[j] for j in tool_idx) + "]",
        })
    return rows
