/* The fast step (faststep.py) in C: the same function, line for line, without the interpreter's cost per line.

   While a loop's only work is its metrics, `bridge.step(...)` is this object. It does what faststep.py's `step`
   does, in the same order and with the same calls into Python: count the call in the bridge's `__dict__`, check the
   loss (divergence guard), take the general way (`slow_step`) when it is due or called from another thread, else
   update the namespace, open the hook timer's batch and run each metric of `plan`, writing a float through its
   tag's writer; anything raised goes to `runner.recover`, as faststep.py's `except BaseException` does.
   faststep.py stays the reference and the fallback (no compiler, or BIDVIZ_FASTSTEP=python); the tests run both.

   Only the step's own bookkeeping is in C: the metrics' code, the writers, `see`, `slow_step`, `recover`, `settle`
   and `attend` are the Python functions faststep.py calls. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *state;      /* the bridge's __dict__: `_calls`, `_prepare`, `_next_check` */
    PyObject *see;        /* the divergence guard's `see`, or None */
    PyObject *slow_step;  /* Parts.slow_step */
    PyObject *timer;      /* the HookTimer */
    PyObject *control;    /* its `step` is set at each step */
    PyObject *ns;         /* the metrics' namespace (a dict) */
    PyObject *runner;     /* recover, settle, watch_threads */
    PyObject *ctrl_c;     /* its `count` */
    PyObject *threads;    /* counts the threads alive */
    PyObject *parts;      /* its `attend` */
    PyObject *writer;     /* the metrics' writer, for `emit` */
    PyObject *plan;       /* tuple of (metric, fn, state, write or None, keep, the metric's __dict__ or None) */
    PyObject *active;     /* the metrics' list, for `recover` */
    PyObject *threads_seen;
    PyObject *control_vars;  /* control's __dict__ (None: setattr) */
    /* the offsets of the timer's slots hook, batch, thread_id, firing, fired and of ctrl_c's count (-1: getattr) */
    Py_ssize_t hook, batch, thread_id, firing, fired, count;
    long long limit;      /* the call count from which to take the general way (0: held) */
    long long threads_every;
    int guarded, spiky;
} StepObject;

static PyObject *s_calls, *s_prepare, *s_next_check, *s_step, *s_loss, *s_hook, *s_batch, *s_count, *s_thread_id,
    *s_firing, *s_fired, *s_errors_in_row, *s_emit, *s_recover, *s_settle, *s_watch_threads, *s_attend, *one, *zero;

static int
is_name(PyObject *name, PyObject *interned)
{
    return name == interned || (PyUnicode_Check(name) && PyUnicode_Compare(name, interned) == 0);
}

static PyObject *
dict_get(PyObject *dict, PyObject *key)  /* borrowed; NULL with KeyError set when missing */
{
    PyObject *value = PyDict_GetItemWithError(dict, key);
    if (value == NULL && !PyErr_Occurred()) {
        PyErr_SetObject(PyExc_KeyError, key);
    }
    return value;
}

/* obj.name through obj's __dict__ (`vars`: faststep.py checked that no descriptor of its class takes the name; None:
   the general way); the class's attribute when the instance has none of its own. A new reference. */
static PyObject *
get_attr(PyObject *vars, PyObject *obj, PyObject *name)
{
    if (vars != Py_None) {
        PyObject *value = PyDict_GetItemWithError(vars, name);
        if (value != NULL) {
            return Py_NewRef(value);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(obj, name);
}

static int
set_attr(PyObject *vars, PyObject *obj, PyObject *name, PyObject *value)
{
    return vars != Py_None ? PyDict_SetItem(vars, name, value) : PyObject_SetAttr(obj, name, value);
}

/* A slot's offset in `obj` (HookTimer and _CtrlC have `__slots__`): its member descriptor, found on obj's type as
   getattr would find it (a property of a subclass in its place: -1, the general way). */
static Py_ssize_t
slot_offset(PyObject *obj, PyObject *name)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)Py_TYPE(obj), name);
    if (descr == NULL) {
        PyErr_Clear();
        return -1;
    }
    Py_ssize_t offset = -1;
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *def = ((PyMemberDescrObject *)descr)->d_member;
        if (def->type == T_OBJECT_EX && !(def->flags & READONLY)) {
            offset = def->offset;
        }
    }
    Py_DECREF(descr);
    return offset;
}

static PyObject *
slot_get(PyObject *obj, Py_ssize_t offset, PyObject *name)  /* a new reference */
{
    if (offset >= 0) {
        PyObject *value = *(PyObject **)((char *)obj + offset);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(obj, name);  /* unset: AttributeError, as Python raises it */
}

static int
slot_set(PyObject *obj, Py_ssize_t offset, PyObject *name, PyObject *value)
{
    if (offset >= 0) {
        PyObject **slot = (PyObject **)((char *)obj + offset);
        Py_XSETREF(*slot, Py_NewRef(value));
        return 0;
    }
    return PyObject_SetAttr(obj, name, value);
}

static int
truth(PyObject *value)  /* bool(value), taking the new reference a getter gave (NULL: its error); -1 on error */
{
    if (value == NULL) {
        return -1;
    }
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

static int
call_method0(PyObject *obj, PyObject *name)  /* obj.name(), its result dropped; -1 on error */
{
    PyObject *done = PyObject_CallMethodNoArgs(obj, name);
    Py_XDECREF(done);
    return done == NULL ? -1 : 0;
}

/* The keywords other than `step` and `loss` (the loop's context) into `dict`; -1 on error */
static int
put_context(PyObject *dict, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (!is_name(name, s_step) && !is_name(name, s_loss) && PyDict_SetItem(dict, name, args[nargs + i]) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
same_thread(StepObject *self)  /* timer.thread_id == threading.get_ident(); -1 on error */
{
    PyObject *id = slot_get(self->timer, self->thread_id, s_thread_id);
    if (id == NULL) {
        return -1;
    }
    int same = 0;
    if (PyLong_CheckExact(id)) {
        unsigned long value = PyLong_AsUnsignedLong(id);
        if (value == (unsigned long)-1 && PyErr_Occurred()) {
            PyErr_Clear();  /* not a thread id (negative, too large): not this thread */
        } else {
            same = value == PyThread_get_thread_ident();
        }
    }
    Py_DECREF(id);
    return same;
}

static PyObject *
call2(PyObject *fn, PyObject *a, PyObject *b)
{
    PyObject *args[2] = {a, b};
    return PyObject_Vectorcall(fn, args, 2, NULL);
}

/* The metrics of one step, as faststep.py's `try` block; 0 when it ran to its end, -1 with an exception set. */
static int
run_plan(StepObject *self, PyObject *plan, PyObject *step)
{
    Py_ssize_t n = PyTuple_GET_SIZE(plan);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyTuple_GET_ITEM(plan, i);
        PyObject *m = PyTuple_GET_ITEM(entry, 0), *fn = PyTuple_GET_ITEM(entry, 1), *kept = PyTuple_GET_ITEM(entry, 2),
                 *write = PyTuple_GET_ITEM(entry, 3), *keep = PyTuple_GET_ITEM(entry, 4),
                 *m_vars = PyTuple_GET_ITEM(entry, 5);
        if (slot_set(self->timer, self->hook, s_hook, m) < 0) {
            return -1;
        }
        PyObject *value = PyObject_Vectorcall(fn, &kept, 1, NULL);
        if (value == NULL) {
            return -1;
        }
        PyObject *shown;
        if (PyFloat_CheckExact(value) && write != Py_None) {
            PyObject *done = call2(write, value, step);  /* as faststep.py: a foreign writer may take no walltime */
            if (done == NULL) {
                Py_DECREF(value);
                return -1;
            }
            Py_DECREF(done);
            shown = value;  /* the reference moves to `shown` */
        } else if (value == Py_None) {
            Py_DECREF(value);
            if (set_attr(m_vars, m, s_errors_in_row, zero) < 0) {
                return -1;
            }
            continue;
        } else {
            shown = PyObject_CallMethodObjArgs(m, s_emit, self->writer, value, step, NULL);
            Py_DECREF(value);
            if (shown == NULL) {
                return -1;
            }
        }
        PyObject *point = PyTuple_New(2);
        if (point == NULL) {
            Py_DECREF(shown);
            return -1;
        }
        PyTuple_SET_ITEM(point, 0, Py_NewRef(step));
        PyTuple_SET_ITEM(point, 1, shown);  /* steals the reference */
        PyObject *done = PyObject_Vectorcall(keep, &point, 1, NULL);
        Py_DECREF(point);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
        int errors = truth(get_attr(m_vars, m, s_errors_in_row));
        if (errors < 0 || (errors && set_attr(m_vars, m, s_errors_in_row, zero) < 0)) {
            return -1;
        }
    }
    if (slot_set(self->timer, self->hook, s_hook, Py_None) < 0) {
        return -1;
    }
    int firing = truth(slot_get(self->timer, self->firing, s_firing));
    if (firing < 0) {
        return -1;
    }
    if (!firing) {
        firing = truth(slot_get(self->timer, self->fired, s_fired));
        if (firing < 0) {
            return -1;
        }
    }
    if (firing) {
        PyObject *done = PyObject_CallMethodOneArg(self->runner, s_settle, step);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
    }
    return 0;
}

/* faststep.py's `except BaseException as e: runner.recover(e, timer.hook, active, step, started)` */
static int
recover(StepObject *self, PyObject *step, PyObject *started)
{
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb != NULL) {
        PyException_SetTraceback(exc, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    PyObject *hook = slot_get(self->timer, self->hook, s_hook);
    if (hook == NULL) {
        PyObject *t2, *e2, *tb2;  /* raised while handling `exc`: chained as Python chains it */
        PyErr_Fetch(&t2, &e2, &tb2);
        PyErr_NormalizeException(&t2, &e2, &tb2);
        PyException_SetContext(e2, exc);  /* steals exc */
        PyErr_Restore(t2, e2, tb2);
        return -1;
    }
    PyObject *active = self->active;
    Py_INCREF(active);
    PyObject *call[6] = {self->runner, exc, hook, active, step, started};
    PyObject *done = PyObject_VectorcallMethod(s_recover, call, 6, NULL);
    Py_DECREF(active);
    Py_DECREF(hook);
    Py_DECREF(exc);
    if (done == NULL) {
        return -1;
    }
    Py_DECREF(done);
    return 0;
}

static PyObject *
slow_way(StepObject *self, PyObject *calls, PyObject *step, PyObject *loss, PyObject *const *args, Py_ssize_t nargs,
         PyObject *kwnames)
{
    PyObject *context = PyDict_New();
    if (context == NULL) {
        return NULL;
    }
    if (put_context(context, args, nargs, kwnames) < 0 ||
        (loss != Py_None && PyDict_SetItem(context, s_loss, loss) < 0)) {
        Py_DECREF(context);
        return NULL;
    }
    PyObject *prepare = dict_get(self->state, s_prepare);
    if (prepare == NULL) {
        Py_DECREF(context);
        return NULL;
    }
    Py_INCREF(prepare);
    PyObject *call[4] = {calls, step, context, prepare};
    PyObject *next = PyObject_Vectorcall(self->slow_step, call, 4, NULL);
    Py_DECREF(prepare);
    Py_DECREF(context);
    if (next == NULL) {
        return NULL;
    }
    int failed = PyDict_SetItem(self->state, s_next_check, next);
    Py_DECREF(next);
    if (failed) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
step_call(StepObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "step() takes from 0 to 2 positional arguments but %zd were given", nargs);
        return NULL;
    }
    PyObject *step = nargs >= 1 ? args[0] : NULL, *loss = nargs >= 2 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0, extra = 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot = name == s_loss ? &loss : name == s_step ? &step : is_name(name, s_loss) ? &loss
                          : is_name(name, s_step) ? &step : NULL;
        if (slot == NULL) {
            extra++;
        } else if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError, "step() got multiple values for argument '%U'", name);
            return NULL;
        } else {
            *slot = args[nargs + i];
        }
    }
    if (step == NULL) {
        step = Py_None;
    }
    if (loss == NULL) {
        loss = Py_None;
    }

    PyObject *count = dict_get(self->state, s_calls);
    if (count == NULL) {
        return NULL;
    }
    PyObject *calls = PyNumber_Add(count, one);
    if (calls == NULL) {
        return NULL;
    }
    PyObject *result = NULL, *at = NULL, *started = NULL, *plan = NULL;
    if (PyDict_SetItem(self->state, s_calls, calls) < 0) {
        goto done;
    }
    long long n = PyLong_AsLongLong(calls);
    if (n == -1 && PyErr_Occurred()) {
        goto done;
    }
    /* x - x is 0.0 for every finite float: NaN, an infinity or anything else but a float goes to `see` */
    if (self->guarded && loss != Py_None &&
        (!PyFloat_CheckExact(loss) || !isfinite(PyFloat_AS_DOUBLE(loss)) || self->spiky)) {
        at = step == Py_None ? PyNumber_Subtract(calls, one) : Py_NewRef(step);
        if (at == NULL) {
            goto done;
        }
        PyObject *seen = call2(self->see, loss, at);
        if (seen == NULL) {
            goto done;
        }
        Py_DECREF(seen);
    }
    int same = n >= self->limit ? 0 : same_thread(self);
    if (same < 0) {
        goto done;
    }
    if (!same) {
        result = slow_way(self, calls, step, loss, args, nargs, kwnames);
        goto done;
    }
    if (at == NULL) {  /* the step's number, unless the guard already made it */
        at = step == Py_None ? PyNumber_Subtract(calls, one) : Py_NewRef(step);
    }
    if (at == NULL || set_attr(self->control_vars, self->control, s_step, at) < 0) {
        goto done;
    }
    if (loss != Py_None && PyDict_SetItem(self->ns, s_loss, loss) < 0) {
        goto done;
    }
    if ((extra && put_context(self->ns, args, nargs, kwnames) < 0) || PyDict_SetItem(self->ns, s_step, at) < 0) {
        goto done;
    }
    PyObject *batch = slot_get(self->timer, self->batch, s_batch);
    if (batch == NULL) {
        goto done;
    }
    PyObject *next_batch = PyNumber_InPlaceAdd(batch, one);
    Py_DECREF(batch);
    if (next_batch == NULL) {
        goto done;
    }
    int failed = slot_set(self->timer, self->batch, s_batch, next_batch);
    Py_DECREF(next_batch);
    if (failed < 0 || (started = slot_get(self->ctrl_c, self->count, s_count)) == NULL) {
        goto done;
    }
    plan = Py_NewRef(self->plan);  /* `use` may swap it while a metric runs: this step runs the one it began */
    if (run_plan(self, plan, at) < 0 && recover(self, at, started) < 0) {
        goto done;
    }
    if (!(n & (self->threads_every - 1))) {  /* as the runner does: one look every few batches */
        PyObject *alive = PyObject_CallNoArgs(self->threads);
        if (alive == NULL) {
            goto done;
        }
        int more = PyObject_RichCompareBool(alive, self->threads_seen, Py_GT);
        if (more < 0) {
            Py_DECREF(alive);
            goto done;
        }
        if (more) {  /* the runner watches each metric on its own until a step leaves none */
            if (call_method0(self->runner, s_watch_threads) < 0) {
                Py_DECREF(alive);
                goto done;
            }
            self->limit = 0;
            if (call_method0(self->parts, s_attend) < 0) {
                Py_DECREF(alive);
                goto done;
            }
        }
        Py_SETREF(self->threads_seen, alive);
    }
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(plan);
    Py_XDECREF(started);
    Py_XDECREF(at);
    Py_DECREF(calls);
    return result;
}

static int
Step_traverse(StepObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->state);
    Py_VISIT(self->see);
    Py_VISIT(self->slow_step);
    Py_VISIT(self->timer);
    Py_VISIT(self->control);
    Py_VISIT(self->ns);
    Py_VISIT(self->runner);
    Py_VISIT(self->ctrl_c);
    Py_VISIT(self->threads);
    Py_VISIT(self->parts);
    Py_VISIT(self->writer);
    Py_VISIT(self->plan);
    Py_VISIT(self->active);
    Py_VISIT(self->threads_seen);
    Py_VISIT(self->control_vars);
    return 0;
}

static int
Step_clear(StepObject *self)
{
    Py_CLEAR(self->state);
    Py_CLEAR(self->see);
    Py_CLEAR(self->slow_step);
    Py_CLEAR(self->timer);
    Py_CLEAR(self->control);
    Py_CLEAR(self->ns);
    Py_CLEAR(self->runner);
    Py_CLEAR(self->ctrl_c);
    Py_CLEAR(self->threads);
    Py_CLEAR(self->parts);
    Py_CLEAR(self->writer);
    Py_CLEAR(self->plan);
    Py_CLEAR(self->active);
    Py_CLEAR(self->threads_seen);
    Py_CLEAR(self->control_vars);
    return 0;
}

static void
Step_dealloc(StepObject *self)
{
    PyObject_GC_UnTrack(self);
    Step_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Step_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"state", "guarded", "spiky", "see", "slow_step", "timer", "control", "ns", "runner",
                            "ctrl_c", "threads", "parts", "writer", "threads_every", "control_vars", NULL};
    PyObject *state, *see, *slow_step, *timer, *control, *ns, *runner, *ctrl_c, *threads, *parts, *writer;
    PyObject *control_vars = Py_None;
    int guarded, spiky;
    long long threads_every;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!ppOOOOO!OOOOOL|O:Step", names, &PyDict_Type, &state,
                                     &guarded, &spiky, &see, &slow_step, &timer, &control, &PyDict_Type, &ns, &runner,
                                     &ctrl_c, &threads, &parts, &writer, &threads_every, &control_vars)) {
        return NULL;
    }
    if (control_vars != Py_None && !PyDict_CheckExact(control_vars)) {
        PyErr_SetString(PyExc_TypeError, "control_vars must be a dict or None");
        return NULL;
    }
    if (threads_every < 1 || (threads_every & (threads_every - 1))) {
        PyErr_SetString(PyExc_ValueError, "threads_every must be a power of two");
        return NULL;
    }
    if (guarded && !PyCallable_Check(see)) {
        PyErr_SetString(PyExc_TypeError, "a guarded step needs a callable `see`");
        return NULL;
    }
    StepObject *self = (StepObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = (vectorcallfunc)step_call;
    self->state = Py_NewRef(state);
    self->see = Py_NewRef(see);
    self->slow_step = Py_NewRef(slow_step);
    self->timer = Py_NewRef(timer);
    self->control = Py_NewRef(control);
    self->ns = Py_NewRef(ns);
    self->runner = Py_NewRef(runner);
    self->ctrl_c = Py_NewRef(ctrl_c);
    self->threads = Py_NewRef(threads);
    self->parts = Py_NewRef(parts);
    self->writer = Py_NewRef(writer);
    self->control_vars = Py_NewRef(control_vars);
    self->hook = slot_offset(timer, s_hook);
    self->batch = slot_offset(timer, s_batch);
    self->thread_id = slot_offset(timer, s_thread_id);
    self->firing = slot_offset(timer, s_firing);
    self->fired = slot_offset(timer, s_fired);
    self->count = slot_offset(ctrl_c, s_count);
    self->plan = PyTuple_New(0);
    self->active = PyList_New(0);
    self->threads_seen = PyLong_FromLong(0);
    if (self->plan == NULL || self->active == NULL || self->threads_seen == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->guarded = guarded;
    self->spiky = spiky;
    self->threads_every = threads_every;
    self->limit = 0;
    return (PyObject *)self;
}

static int
set_plan(StepObject *self, PyObject *value, void *closure)
{
    if (value == NULL || !PyTuple_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "plan must be a tuple");
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(value);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *entry = PyTuple_GET_ITEM(value, i);
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 6 ||
            (PyTuple_GET_ITEM(entry, 5) != Py_None && !PyDict_CheckExact(PyTuple_GET_ITEM(entry, 5)))) {
            PyErr_SetString(PyExc_TypeError,
                            "each entry of plan must be (metric, fn, state, write, keep, the metric's vars or None)");
            return -1;
        }
    }
    Py_SETREF(self->plan, Py_NewRef(value));
    return 0;
}

/* The object fields `use` sets (`active`, `threads_seen`): `closure` is the field's offset. Never deleted: the step
   uses them without a NULL check. */
static PyObject *
get_field(StepObject *self, void *closure)
{
    return Py_NewRef(*(PyObject **)((char *)self + (Py_ssize_t)closure));
}

static int
set_field(StepObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "the fast step's fields cannot be deleted");
        return -1;
    }
    Py_SETREF(*(PyObject **)((char *)self + (Py_ssize_t)closure), Py_NewRef(value));
    return 0;
}

static PyGetSetDef Step_getset[] = {
    {"plan", (getter)get_field, (setter)set_plan, "the metrics run at each step (metric, fn, state, write, keep, vars)",
     (void *)offsetof(StepObject, plan)},
    {"active", (getter)get_field, (setter)set_field, "the metrics' list, handed to `recover`",
     (void *)offsetof(StepObject, active)},
    {"threads_seen", (getter)get_field, (setter)set_field, "the threads counted at the last look",
     (void *)offsetof(StepObject, threads_seen)},
    {NULL},
};

static PyMemberDef Step_members[] = {
    {"limit", T_LONGLONG, offsetof(StepObject, limit), 0, "the call count from which to take the general way"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(StepObject, vectorcall), READONLY},
    {NULL},
};

static PyTypeObject StepType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "bidviz.bridge._faststep.Step",
    .tp_doc = "A bridge's fast `step(step=None, loss=None, **context)`: faststep.py's `step`, in C.",
    .tp_basicsize = sizeof(StepObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = Step_new,
    .tp_dealloc = (destructor)Step_dealloc,
    .tp_traverse = (traverseproc)Step_traverse,
    .tp_clear = (inquiry)Step_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(StepObject, vectorcall),
    .tp_getset = Step_getset,
    .tp_members = Step_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "bidviz.bridge._faststep",
    .m_doc = "faststep.py's step, in C (optional: faststep.py runs without it).",
    .m_size = -1,
};

#define INTERN(var, text)                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL) { \
        return NULL;                                       \
    }

PyMODINIT_FUNC
PyInit__faststep(void)
{
    INTERN(s_calls, "_calls");
    INTERN(s_prepare, "_prepare");
    INTERN(s_next_check, "_next_check");
    INTERN(s_step, "step");
    INTERN(s_loss, "loss");
    INTERN(s_hook, "hook");
    INTERN(s_batch, "batch");
    INTERN(s_count, "count");
    INTERN(s_thread_id, "thread_id");
    INTERN(s_firing, "firing");
    INTERN(s_fired, "fired");
    INTERN(s_errors_in_row, "errors_in_row");
    INTERN(s_emit, "emit");
    INTERN(s_recover, "recover");
    INTERN(s_settle, "settle");
    INTERN(s_watch_threads, "watch_threads");
    INTERN(s_attend, "attend");
    if ((one = PyLong_FromLong(1)) == NULL || (zero = PyLong_FromLong(0)) == NULL) {
        return NULL;
    }
    if (PyType_Ready(&StepType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(m, "Step", (PyObject *)&StepType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
