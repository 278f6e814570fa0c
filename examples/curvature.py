"""The top Hessian eigenvalue and the Hessian's trace while an MLP trains (README, Curvature)."""
import fastprop as fp


def track(epochs=5):
    """Trains a 64-64-10 tanh MLP on the digits; after each epoch, the loss, the top Hessian
    eigenvalue (Lanczos on hvp) and the trace (Hutchinson) on 512 training samples."""
    X, y = fp.datasets.load_digits()
    X_train, X_test, y_train, y_test = fp.datasets.train_test_split(X, y, test_size=0.25, seed=0)
    model = fp.Sequential(fp.Linear(64, 64, rng=0), fp.Tanh(), fp.Linear(64, 10, rng=1))
    loss_fn = fp.SoftmaxCrossEntropy()
    opt = fp.SGD(model.parameters(), lr=0.1, momentum=0.9)
    Xc, yc = X_train[:512], y_train[:512]       # the curvature of the loss on these 512 samples
    rows = []
    for epoch in range(1, epochs + 1):
        fp.fit(model, X_train, y_train, loss=loss_fn, optimizer=opt, epochs=1, batch_size=32,
               seed=epoch, progress=False)
        top = fp.hessian_eigs(model, loss_fn, Xc, yc, k=1)[0]           # Lanczos (eigsh) on hvp
        trace = fp.hessian_trace(model, loss_fn, Xc, yc, n_samples=32)   # Hutchinson
        J = fp.evaluate(model, Xc, yc, loss_fn)["loss"]
        print(f"epoch {epoch}: loss {J:.4f}  top eigenvalue {top:6.3f}  trace ≈ {trace:5.1f}")
        rows.append((J, top, trace))
    return model, (Xc, yc, loss_fn), rows


if __name__ == "__main__":
    track()
