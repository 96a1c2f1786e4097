namespace InterpMesh.Plugins.Probing.Fitting;

/// <summary>Held-out metrics of a classifier. Binary: the second class is positive. Multi-class: macro averages (one-vs-rest AUC).</summary>
internal sealed record ProbeMetrics(double Accuracy, double F1, double Precision, double Recall, double RocAuc)
{
    public static ProbeMetrics Of(int[] truth, int[] predicted, double[][] scores, int classes)
    {
        int n = truth.Length;
        double accuracy = n == 0 ? 0 : truth.Zip(predicted).Count(p => p.First == p.Second) / (double)n;
        var positives = classes == 2 ? new[] { 1 } : Enumerable.Range(0, classes).ToArray();
        double f1 = 0, precision = 0, recall = 0, auc = 0;
        foreach (int c in positives)
        {
            int tp = 0, fp = 0, fn = 0;
            for (int i = 0; i < n; i++)
            {
                if (predicted[i] == c && truth[i] == c) tp++;
                else if (predicted[i] == c) fp++;
                else if (truth[i] == c) fn++;
            }
            double p = tp + fp == 0 ? 0 : tp / (double)(tp + fp);
            double r = tp + fn == 0 ? 0 : tp / (double)(tp + fn);
            precision += p;
            recall += r;
            f1 += p + r == 0 ? 0 : 2 * p * r / (p + r);
            auc += Auc([.. truth.Select(t => t == c)], [.. scores.Select(s => s[c])]);
        }
        int m = positives.Length;
        return new ProbeMetrics(accuracy, f1 / m, precision / m, recall / m, auc / m);
    }

    /// <summary>ROC-AUC as the Mann–Whitney statistic, ties counted half.</summary>
    public static double Auc(bool[] positive, double[] score)
    {
        int nPos = positive.Count(p => p), nNeg = positive.Length - nPos;
        if (nPos == 0 || nNeg == 0)
            return double.NaN;
        var order = Enumerable.Range(0, score.Length).OrderBy(i => score[i]).ToArray();
        var ranks = new double[score.Length];
        for (int i = 0; i < order.Length;)
        {
            int j = i;
            while (j + 1 < order.Length && score[order[j + 1]] == score[order[i]])
                j++;
            double rank = (i + j) / 2.0 + 1;
            for (int k = i; k <= j; k++)
                ranks[order[k]] = rank;
            i = j + 1;
        }
        double sum = 0;
        for (int i = 0; i < score.Length; i++)
        {
            if (positive[i])
                sum += ranks[i];
        }
        return (sum - nPos * (nPos + 1) / 2.0) / ((double)nPos * nNeg);
    }
}
