"""A class graded by real nbgrader: the course `python -m ptsim.editions --nbgrader` writes is
generated, three students' submissions are autograded, and the gradebook holds the right grades.

Chapter 7 keeps it quick: three exercises, 7.1 drawn for each student."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from ptsim.editions import SAMPLES, main
from tests.test_exercises import chapter_cells

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = "07-hard-cases.ipynb"
ASSIGNMENT, NOTEBOOK = "ch07", "07-hard-cases"
EXERCISES = ("ex71", "ex72", "ex73")
STUDENTS = ("ada", "bob", "cy", "dee")
REMADE_FOR_THE_READER = """import os
os.environ["PTSIM_STUDENT"] = "reader"
ex71 = Exercise(lambda state: "?", private_and_shared, copied_then_faults, key="7.1")
"""


def nbgrader(course, *args):
    """Run the nbgrader command line in the course, as an instructor would. A PTSIM_STUDENT left
    in the environment must not decide whose problems are graded (nbgrader_config.py drops it)."""
    env = dict(os.environ, PTSIM_STUDENT="reader", JUPYTERHUB_USER="instructor")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # nbgrader runs `alembic`
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def autograded(course, notebook, assignment, students, exercises):
    """{(student, exercise): the points the autograder gave}, from the course's gradebook."""
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        return {(s, e): gb.find_grade(f"{e}-test", notebook, assignment, s).score for s in students for e in exercises}


def answer_cell(nb, exercise):
    [cell] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == f"{exercise}-answer"]
    return cell


def submit(course, student, nb, replace=None):
    """Put `nb` in as `student`'s submission, each exercise's solution lines replaced as given."""
    nb = nbformat.from_dict(nb)
    for exercise, lines in (replace or {}).items():
        cell = answer_cell(nb, exercise)
        cell.source = re.sub(r"### BEGIN SOLUTION\n.*?### END SOLUTION", lines, cell.source, flags=re.S)
    folder = course / "submitted" / student / ASSIGNMENT
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / CHAPTER)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    course = tmp_path_factory.mktemp("course")
    assert main([str(ROOT / "notebooks" / CHAPTER), "--nbgrader", "-o", str(course), "--samples", ASSIGNMENT]) == 0
    nbgrader(course, "generate_assignment", ASSIGNMENT)
    source = nbformat.read(course / "source" / ASSIGNMENT / CHAPTER, as_version=4)
    submit(course, "ada", source)  # the instructor's solutions: right for every student's numbers
    submit(course, "bob", source, {"ex71": "answer = [0, 0]", "ex72": "answer = 4"})
    submit(course, "cy", source, {"ex72": "raise RuntimeError('a slip')"})
    # dee remakes 7.1 with the book reader's numbers, to copy the book's solution
    submit(course, "dee", source, {"ex71": REMADE_FOR_THE_READER + "answer = [ex71.state[2], 8]"})
    start = time.perf_counter()
    nbgrader(course, "autograde", ASSIGNMENT)
    print(f"\nnbgrader autograde: {(time.perf_counter() - start) / (len(STUDENTS) + len(SAMPLES)):.1f} s per submission of {CHAPTER}")
    scores = autograded(course, NOTEBOOK, ASSIGNMENT, STUDENTS + SAMPLES, EXERCISES)
    return course, scores


def test_generate_assignment_releases_the_chapter_without_its_solutions(graded):
    course, _ = graded
    released = nbformat.read(course / "release" / ASSIGNMENT / CHAPTER, as_version=4)
    for exercise in EXERCISES:
        assert answer_cell(released, exercise).source.startswith("# YOUR CODE HERE\nraise NotImplementedError()")
    assert not any("SOLUTION" in c.source for c in released.cells)


def test_right_answers_get_every_point(graded):
    _, scores = graded
    assert [scores["ada", e] for e in EXERCISES] == [1, 1, 1]


def test_wrong_answers_get_nothing_for_those_exercises_only(graded):
    _, scores = graded
    assert [scores["bob", e] for e in EXERCISES] == [0, 0, 1]


def test_a_cell_that_raises_scores_0_and_the_rest_is_still_graded(graded):
    _, scores = graded
    assert [scores["cy", e] for e in EXERCISES] == [1, 0, 1]


def test_an_exercise_remade_for_someone_else_scores_0_though_its_check_passed(graded):
    course, scores = graded
    assert [scores["dee", e] for e in EXERCISES] == [0, 1, 1]
    nb = nbformat.read(course / "autograded" / "dee" / ASSIGNMENT / CHAPTER, as_version=4)
    [remade] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex71-answer"]
    assert remade.outputs[-1]["data"]["text/plain"].startswith("Right:")  # the copied solution checks...
    [test] = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex71-test"]
    assert "ex71 was made for reader, not this submission's student" in test.outputs[-1]["evalue"]  # ...for the wrong student


def test_each_student_is_graded_on_their_own_numbers(graded, monkeypatch):
    """The autograder made 7.1 for the student whose submission it ran, not for the reader its
    environment named: the prompt each autograded notebook shows is that student's."""
    course, _ = graded
    shown = {}
    for student in ("ada", "bob", "cy", "reader"):
        monkeypatch.setenv("PTSIM_STUDENT", student)
        shown[student] = str(chapter_cells(CHAPTER, "19639aa2", "ce2f17ad")["ex71"])
    for student in ("ada", "bob", "cy"):
        nb = nbformat.read(course / "autograded" / student / ASSIGNMENT / CHAPTER, as_version=4)
        [cell] = [c for c in nb.cells if c.get("id") == "ce2f17ad"]
        assert cell.outputs[-1]["data"]["text/plain"] == shown[student]
    assert len(set(shown.values())) > 1  # the numbers do differ between students


def test_the_sample_submissions_an_instructor_rehearses_with_grade_as_they_say(graded):
    """`--samples`: the instructor's solutions get every point; every checked answer -1, none;
    the first answer raising, none there and the rest still graded."""
    _, scores = graded
    assert [[scores[s, e] for e in EXERCISES] for s in SAMPLES] == [[1, 1, 1], [0, 0, 0], [0, 1, 1]]


def test_the_lab_is_graded_step_by_step(tmp_path):
    """Chapter 10 in the course: its three steps and two exercises are autograded (`Graded` and
    `FIND_THE_BUG` record whether a check passed). The instructor's solutions pass every step;
    10.1's stored solution is the reader's kernel's answer, so it is wrong for another student
    (unless both drew one bug); steps left undone score 0."""
    lab = "10-lab-write-the-patch"
    assert main([str(ROOT / "notebooks" / f"{lab}.ipynb"), "--nbgrader", "-o", str(tmp_path), "--samples", "ch10"]) == 0
    nbgrader(tmp_path, "generate_assignment", "ch10")
    nbgrader(tmp_path, "autograde", "ch10")
    graded = ("step1", "step2", "step3", "ex101", "ex102")
    points = autograded(tmp_path, lab, "ch10", SAMPLES, graded)
    scores = {s: [points[s, e] for e in graded] for s in SAMPLES}
    from ptsim.broken import FIND_THE_BUG
    readers_answer_fits = bool(FIND_THE_BUG.check("unshare", 4, student="sample-right"))
    assert scores["sample-right"] == [1, 1, 1, int(readers_answer_fits), 1]
    assert scores["sample-wrong"] == [0, 0, 0, 0, 0]
