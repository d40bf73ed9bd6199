/* A FIFO of structs linked through a member of their own (intrusive: no
 * allocation to queue or dequeue): the job queues of the upstream client
 * and of fleet mode. Not thread-safe: its owner's lock guards it. */
#pragma once

#include <stddef.h>

struct qlink {
    struct qlink *next;
};

struct queue {
    struct qlink *head, *tail;
    unsigned n;
};


static inline void queue_push(struct queue *q, struct qlink *l) {
    l->next = NULL;
    if (q->tail)
        q->tail->next = l;
    else
        q->head = l;
    q->tail = l;
    q->n++;
}

static inline void queue_push_front(struct queue *q, struct qlink *l) {
    l->next = q->head;
    q->head = l;
    if (!q->tail)
        q->tail = l;
    q->n++;
}

/* The first link, unlinked, or NULL. */
static inline struct qlink *queue_pop(struct queue *q) {
    struct qlink *l = q->head;

    if (l) {
        q->head = l->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        l->next = NULL;
    }
    return l;
}

/* The first entry, unlinked, or NULL: offset is that of its link. */
static inline void *queue_pop_entry(struct queue *q, size_t offset) {
    struct qlink *l = queue_pop(q);

    return l ? (char *)l - offset : NULL;
}

/* The first struct of type (linked through its member), unlinked, or NULL. */
#define QUEUE_POP(q, type, member) ((type *)queue_pop_entry(q, offsetof(type, member)))

/* Moves everything in from, in its order, before what q holds. */
static inline void queue_prepend(struct queue *q, struct queue *from) {
    if (!from->head)
        return;
    from->tail->next = q->head;
    if (!q->tail)
        q->tail = from->tail;
    q->head = from->head;
    q->n += from->n;
    *from = (struct queue){ 0 };
}
