"""The prompts VLMEvalKit sends its LLM judge to read a response its rules cannot, reproduced character for character.

An optional judge (`eval.judge`) reads those responses as the paper's VLMEvalKit run did (with Claude-Haiku-4.5 as
the judge), so the prompts are VLMEvalKit's own, typos included ("Model respone", "Judement", "Your should"), as of
open-compass/VLMEvalKit commit c44bc601 (May 2026, when the paper was evaluated; the files below are unchanged up
to Aug 2026):

* options: ``vlmeval/dataset/utils/multiple_choice.py`` ``build_prompt`` (every MCQ benchmark), ``build_prompt_blink``
  (BLINK), ``build_prompt_wemath`` (WeMath), with ``vlmeval/smp/vlm.py`` ``build_option_str`` for the options;
* yes / no: ``vlmeval/dataset/utils/yorn.py`` ``YOrN_match_prompt`` (POPE, HallusionBench);
* math: ``vlmeval/dataset/utils/mathvista.py`` ``build_mathvista_gpt4_prompt``, ``vlmeval/dataset/utils/mathv.py``
  ``build_mathv_gpt4_prompt`` (MathVision), ``vlmeval/dataset/utils/mathverse.py``
  ``build_mathverse_gpt4_extract_prompt`` (MathVerse's extraction step; its second, scoring call is a rule here);
* ``vlmeval/dataset/dynamath.py`` ``DynaMath_auxeval`` and the system prompt ``Dynamath.evaluate`` sets.

VLMEvalKit sends each prompt as the one user message (``OpenAIWrapper``, temperature 0); DynaMath's has its system
message first. Chinese MCQ questions get ``build_prompt_cn`` there; no benchmark registered here has them.
"""

from __future__ import annotations

from collections.abc import Mapping

Messages = list[dict[str, str]]


def user(prompt: str, system: str | None = None) -> Messages:
    """Chat-completions messages: ``system`` (if any), then ``prompt`` as the user's."""
    return ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": prompt}
    ]


# --- options ---------------------------------------------------------------------------------------------------------


def option_text(options: Mapping[str, str]) -> str:
    """``build_option_str``: the options as the judge reads them."""
    return "There are several options: \n" + "".join(f"{letter}. {text}\n" for letter, text in options.items())


_MCQ = (
    "You are an AI assistant who will help me to match "
    "an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Z. "
    "Your should output a single uppercase character in A, B, C, D (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: a cute teddy bear\nYour output: A\n"
    "Example 2: \n"
    "Question: What is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n"
    "Answer: Spider\nYour output: Z\n"
    "Example 3: \n"
    "Question: {}?\nOptions: {}\nAnswer: {}\nYour output: "
)

_WEMATH = (
    "You are an AI assistant who will help me to match "
    "an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Z. "
    "Your should output a single uppercase character in A, B, C, D, E, F, G (if they are valid options), and Z. \n"
    "Example 1: \n"
    "Question: <start>\nWhat is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n<end>\n"
    "Answer: <start>\na cute teddy bear\n<end>\nYour output: A\n"
    "Example 2: \n"
    "Question: <start>\nWhat is the main object in image?\nOptions: A. teddy bear B. rabbit C. cat D. dog\n<end>\n"
    "Answer: <start>\nSpider\n<end>\nYour output: Z\n"
    "Example 3: \n"
    "Question: <start>\n{}\nOptions: {}\n<end>\nAnswer: <start>\n{}\n<end>\nYour output: "
)
# build_prompt_wemath drops the official answer-format template that an earlier WeMath TSV appended to questions.
_WEMATH_TEMPLATE = (
    "Regarding the format, please answer following the template below, and be sure to include two <> symbols:\n"
    "<Thought process>: <<your thought process>> <Answer>: <<your option>>"
)

_BLINK = (
    "You are an AI assistant who will help me to match an answer with several options of a single-choice question. "
    "You are provided with a question, several options, and an answer, "
    "and you need to find which option is most similar to the answer. "
    "If the answer says things like refuse to answer, I'm sorry cannot help, etc., output Z."
    "If the meaning of all options are significantly different from the answer, "
    "or the answer does not select any option, output Z. "
    "Your should output one of the choices, A, B, C, D (if they are valid options), or Z.\n"
    "Example 1: \n"
    "Question: Which point is closer to the camera?\nSelect from the following choices.\n"
    "Options: A. Point A\nB. Point B\n(Z) Failed\n"
    "Answer: Point B, where the child is sitting, is closer to the camera.\nYour output: (B)\n"
    "Example 2: \n"
    "Question: Which point is closer to the camera?\nSelect from the following choices.\n"
    "Options: (A) Point A\n(B) Point B\n(Z) Failed\n"
    "Answer: I'm sorry, but I can't assist with that request.\nYour output: (Z)\n"
    "Example 3: \n"
    "Question: Which point is corresponding to the reference point?\nSelect from the following choices.\n"
    "Options: (A) Point A\n(B) Point B\n(Z) Failed\n"
    "Answer:The reference point (REF) on the first image is at the tip of the pot, "
    "which is the part used to Poke if the pots were used for that action. Looking at the second image, "
    "we need to find the part of the object that would correspond to poking.\n"
    "(A) Point A is at the tip of the spoon's handle, which is not used for poking.\n"
    "(B) Point B is at the bottom of the spoon, which is not used for poking.\n"
    "(C) Point C is on the side of the pspoonot, which is not used for poking.\n"
    "(D) Point D is at the tip of the spoon, which is not used for poking.\n"
    "\nTherefore, there is no correct answer in the choices\nYour output: (Z)\n"
    "Example 4: \n"
    "Question: {}?\nOptions: {}\n(Z) Failed\nAnswer: {}\nYour output: "
)


def mcq(question: str, options: Mapping[str, str], prediction: str) -> str:
    """``build_prompt``: which option the answer matches (a letter, or Z for none)."""
    return _MCQ.format(question, option_text(options), prediction)


def wemath(question: str, options: Mapping[str, str], prediction: str) -> str:
    """``build_prompt_wemath``."""
    return _WEMATH.format(question.replace(_WEMATH_TEMPLATE, ""), option_text(options), prediction)


def blink(question: str, options: Mapping[str, str], prediction: str) -> str:
    """``build_prompt_blink``."""
    return _BLINK.format(question, option_text(options), prediction)


# --- yes / no --------------------------------------------------------------------------------------------------------

_YES_NO = (
    "You are an AI assistant who will help me to match an answer with two options of a question. "
    "The options are only Yes / No. "
    "You are provided with a question and an answer, "
    "and you need to find which option (Yes / No) is most similar to the answer. "
    "If the meaning of all options are significantly different from the answer, output Unknown. "
    "Your should output a single word among the following 3 choices: Yes, No, Unknown.\n"
    "Example 1: \n"
    "Question: Is the word in this image 'Hello'?\nAnswer: The word in this image is 'Hello'.\nYour output: Yes\n"
    "Example 2: \n"
    "Question: Is the word in this image 'Hello'?\n"
    "Answer: The word in this image is not 'Hello'.\nYour output: No\n"
    "Example 3: \n"
    "Question: {}?\nAnswer: {}\nYour output: "
)


def yes_no(question: str, prediction: str) -> str:
    """``YOrN_match_prompt``: Yes, No or Unknown."""
    return _YES_NO.format(question, prediction)


# --- math: MathVista and MathVision (five in-context examples), MathVerse (six) -------------------------------------

_EXTRACT_TASK = """
Please read the following example.
Then extract the answer from the model response and type it at the end of the prompt.\n
"""

_MATHVISTA_EXAMPLES = (
    """
Hint: Please answer the question requiring an integer answer and provide the final value,
e.g., 1, 2, 3, at the end.\n
Question: Which number is missing?\n
Model response: The number missing in the sequence is 14.\n
Extracted answer: 14
""",
    """
Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final value,
e.g., 1.2, 1.3, 1.4, at the end.\n
Question: What is the fraction of females facing the camera?\n
Model response: The fraction of females facing the camera is 0.6,
which means that six out of ten females in the group are facing the camera.\n
Extracted answer: 0.6
""",
    """
Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final value,
e.g., 1.23, 1.34, 1.45, at the end.\n
Question: How much money does Luca need to buy a sour apple candy and a butter-scotch candy? (Unit: $)\n
Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.\n
Extracted answer: 1.45
""",
    """
Hint: Please answer the question requiring a Python list as an answer and provide the final list,
e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.\n
Question: Between which two years does the line graph saw its maximum peak?\n
Model response: The line graph saw its maximum peak between 2007 and 2008.\n
Extracted answer: [2007, 2008]
""",
    """
Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n
Question: What fraction of the shape is blue?\n
Choices: (A) 3/11 (B) 8/11 (C) 6/11 (D) 3/5\n
Model response: The correct answer is (B) 8/11.\n
Extracted answer: B
""",
)

# MathVision's examples are MathVista's with one generic hint for the four free-form ones.
_MATHVISION_EXAMPLES = (
    """
Hint: Please answer the question and provide the final answer at the end.\n
Question: Which number is missing?\n
Model response: The number missing in the sequence is 14.\n
Extracted answer: 14
""",
    """
Hint: Please answer the question and provide the final answer at the end.\n
Question: What is the fraction of females facing the camera?\n
Model response: The fraction of females facing the camera is 0.6,
which means that six out of ten females in the group are facing the camera.\n
Extracted answer: 0.6
""",
    """
Hint: Please answer the question and provide the final answer at the end.\n
Question: How much money does Luca need to buy a sour apple candy and a butter-scotch candy? (Unit: $)\n
Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.\n
Extracted answer: 1.45
""",
    """
Hint: Please answer the question and provide the final answer at the end.\n
Question: Between which two years does the line graph saw its maximum peak?\n
Model response: The line graph saw its maximum peak between 2007 and 2008.\n
Extracted answer: [2007, 2008]
""",
    _MATHVISTA_EXAMPLES[4],
)


def _extract_with_examples(examples: tuple[str, ...], question: str, prediction: str) -> str:
    # As VLMEvalKit concatenates it: no newline between the response and "Extracted answer:".
    return _EXTRACT_TASK + "".join(example + "\n" for example in examples) + question + "\n" + "Model respone: " + \
        prediction + "Extracted answer:"  # fmt: skip


def mathvista(question: str, prediction: str) -> str:
    """``build_mathvista_gpt4_prompt``: ``question`` is the TSV's (the official query, hint and choices included)."""
    return _extract_with_examples(_MATHVISTA_EXAMPLES, question, prediction)


def mathvision(question: str, prediction: str) -> str:
    """``build_mathv_gpt4_prompt``."""
    return _extract_with_examples(_MATHVISION_EXAMPLES, question, prediction)


_MATHVERSE_TASK = """
I am providing you a response from a model to a math problem, termed 'Model Response'. You should extract the answer from the response as 'Extracted Answer'. Directly output the extracted answer with no explanation.\n\n
"""  # noqa: E501
_MATHVERSE_EXAMPLES = (
    """
1.
Model response: 'Rounded to two decimal places, the perimeter of the sector is approximately:\n\n(-2, 1)'
Extracted Answer: (-2, 1)
""",
    """
2.
Model response: 'at those points.\n\nTherefore, the correct option that represents the meaning of the intersection points of the graphs is:\n\nD. They give the solutions to the equation $f(t)=g(t)$.",'
Extracted Answer: D
""",  # noqa: E501
    """
3.
Model response: ' at 1 (there's a closed circle at y = 1), the range in interval notation is \\((-4, 1]\\).\n\nFinal values:\nDomain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)'
Extracted Answer: Domain: \\((-3, 3]\\)\nRange: \\((-4, 1]\\)
""",  # noqa: E501
    """
4.
Model response: 'As it stands, I cannot provide the correct option letter because there isn't enough information to solve for 'y'.'
Extracted Answer: null
""",  # noqa: E501
    """
5.
Model response: 'Given that AB = 17.6 meters, we can now substitute into the equation:\n\nd = 17.6 / cos(38\u00b0)\n\nTherefore, to one decimal place, the distance d between Ned and Bart is approximately 22.3 meters.'
Extracted answer: 22.3
""",  # noqa: E501
    """
6.
Model response:  have all the coefficients for the quadratic function:\n\\( f(x) = ax^2 + bx + c \\)\n\\( f(x) = -1x^2 - 2x + 1 \\)\n\nTherefore, the equation for the graphed function \\( f \\) is:\n\\( f(x) = -x^2 - 2x + 1 \\)"'
Extracted answer: f(x) = -x^2 - 2x + 1
""",  # noqa: E501
)


def mathverse(prediction: str) -> str:
    """``build_mathverse_gpt4_extract_prompt``: the response alone, after six examples."""
    demo = _MATHVERSE_TASK + "".join(example + "\n\n" for example in _MATHVERSE_EXAMPLES)
    return f"{demo}7.\nModel response: '{prediction}'\nExtracted Answer: "


# --- DynaMath --------------------------------------------------------------------------------------------------------

DYNAMATH_SYSTEM = """\
You are a helpful assistant that helps me to format free-form answers into a short answer according to the instruction.
"""
# answer_type -> the instruction DynaMath_auxeval gives its judge.
DYNAMATH_INSTRUCTIONS = {
    "multiple choice": "Output the corresponing choice option, such as 'A', 'B', 'C', 'D', in a single line.",
    "float": "Output a three-digit floating-point number in a single line.",
    "text": (
        "Output a short answer in a single line. Any float numbers in the answer "
        "should be formatted as three-digit floating-point numbers."
    ),
}


def dynamath(prediction: str, answer_type: str) -> str:
    """``DynaMath_auxeval``'s prompt (any answer type but the first two gets the "text" instruction)."""
    instruction = DYNAMATH_INSTRUCTIONS.get(answer_type, DYNAMATH_INSTRUCTIONS["text"])
    return f"Free-form answer: {prediction}\nInstruction: {instruction}"
